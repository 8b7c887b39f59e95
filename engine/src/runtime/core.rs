//! One core's services, started inside its executor.

use std::sync::Arc;

use super::control::Control;

/// What all cores share, built once before the executors start.
#[derive(Clone)]
pub struct Shared {
    pub control: Arc<Control>,
    pub cores: usize,
}

impl Shared {
    pub fn new(control: Arc<Control>, cores: usize) -> Shared {
        Shared { control, cores }
    }
}

pub async fn run(_index: usize, _shared: Shared) -> Result<(), String> {
    Ok(())
}
