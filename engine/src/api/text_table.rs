//! Aligned text columns for the admin commands' human output (`volley queue list`,
//! `volley message show`, `volley status`).

/// `headers` and `rows` as left-aligned columns two spaces apart, one line each; the last column
/// is not padded and trailing spaces are trimmed.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = line(&head);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_on_the_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "1".into(), "x".into()],
            vec!["longer".to_string(), "22".into(), "".into()],
        ];
        let text = super::render(&["NAME", "N", "NOTE"], &rows);
        assert_eq!(text, "NAME    N   NOTE\na       1   x\nlonger  22\n");
    }
}
