//! CPU lists as Linux and systemd write them: `0-3`, `0,2,4-5`.
//!
//! A systemd template instance name is such a list (`spooky@0-3`), and the unit passes it to
//! `spooky --cores`, so one file describes both the unit's `CPUAffinity` and the shards.

/// Parses a CPU list into ascending, distinct CPU numbers.
pub fn parse(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty entry in CPU list {text:?}"));
        }
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a CPU number (in {text:?})"))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!("range {part:?} runs backwards"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    let before = cpus.len();
    cpus.dedup();
    if cpus.len() != before {
        return Err(format!("CPU list {text:?} names a CPU twice"));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_ranges_and_singles() {
        assert_eq!(parse("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse("4,0-1").unwrap(), vec![0, 1, 4]);
        assert_eq!(parse("7").unwrap(), vec![7]);
    }

    #[test]
    fn rejects_bad_lists() {
        assert!(parse("").is_err());
        assert!(parse("3-1").is_err());
        assert!(parse("0,0").is_err());
        assert!(parse("a").is_err());
        assert!(parse("1,,2").is_err());
    }
}
