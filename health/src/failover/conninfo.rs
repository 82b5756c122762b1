//! libpq key/value connection strings, as in `primary_conninfo`: re-pointing a replica
//! keeps every setting it had (user, password file, SSL, `application_name`, ...) and
//! changes only where it connects. Pure.

/// Parses `key=value key='quoted \' value'` pairs, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing '=' after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("dangling backslash")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quote in {key:?}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("dangling backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// The pairs as a connection string, every value quoted.
pub fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{k}='{v}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `conninfo` with `host` and `port` replaced (added when absent), everything else kept.
/// `hostaddr` is dropped: it would override the new host.
pub fn repoint(conninfo: &str, host: &str, port: u16) -> Result<String, String> {
    let mut pairs: Vec<(String, String)> = parse(conninfo)?
        .into_iter()
        .filter(|(k, _)| k != "host" && k != "port" && k != "hostaddr")
        .collect();
    pairs.insert(0, ("port".into(), port.to_string()));
    pairs.insert(0, ("host".into(), host.into()));
    Ok(render(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_repoints() {
        let cases = [
            (
                "user=postgres host=127.0.0.1 port=5432 application_name=pg1",
                "host='10.0.0.2' port='6000' user='postgres' application_name='pg1'",
            ),
            (
                "host = a  port=1 password='it\\'s' sslmode=prefer hostaddr=1.2.3.4",
                "host='10.0.0.2' port='6000' password='it\\'s' sslmode='prefer'",
            ),
            ("", "host='10.0.0.2' port='6000'"),
        ];
        for (before, after) in cases {
            assert_eq!(
                repoint(before, "10.0.0.2", 6000).unwrap(),
                after,
                "{before}"
            );
            // What is rendered parses back to the same pairs.
            let again = parse(after).unwrap();
            assert_eq!(parse(&render(&again)).unwrap(), again);
        }
        for bad in ["host", "host='open", "a=b c"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
