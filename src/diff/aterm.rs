//! A small parser for `.drv` files (Nix's ATerm derivation format):
//! `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`.
//! It never panics on any input.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrvOutput {
    pub path: String,
    pub hash_algo: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Derivation {
    pub outputs: BTreeMap<String, DrvOutput>,
    pub input_drvs: BTreeMap<String, BTreeSet<String>>,
    pub input_srcs: BTreeSet<String>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a derivation: {what} at byte {at}")]
pub struct ParseError {
    pub what: &'static str,
    pub at: usize,
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn err<T>(&self, what: &'static str) -> Result<T, ParseError> {
        Err(ParseError { what, at: self.i })
    }

    fn lit(&mut self, l: &str) -> Result<(), ParseError> {
        if self.s[self.i..].starts_with(l.as_bytes()) {
            self.i += l.len();
            Ok(())
        } else {
            self.err("unexpected text")
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.lit("\"")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(c) = self.s.get(self.i + 1).copied() else {
                        return self.err("dangling escape");
                    };
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"))
    }

    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        self.lit("[")?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return self.err("expected , or ]"),
            }
        }
    }
}

pub fn parse_derivation(text: &str) -> Result<Derivation, ParseError> {
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
    };
    p.lit("Derive(")?;
    let outputs = p.list(|p| {
        p.lit("(")?;
        let name = p.string()?;
        p.lit(",")?;
        let path = p.string()?;
        p.lit(",")?;
        let hash_algo = p.string()?;
        p.lit(",")?;
        let hash = p.string()?;
        p.lit(")")?;
        Ok((
            name,
            DrvOutput {
                path,
                hash_algo,
                hash,
            },
        ))
    })?;
    p.lit(",")?;
    let input_drvs = p.list(|p| {
        p.lit("(")?;
        let path = p.string()?;
        p.lit(",")?;
        let outs = p.list(P::string)?;
        p.lit(")")?;
        Ok((path, outs.into_iter().collect()))
    })?;
    p.lit(",")?;
    let input_srcs = p.list(P::string)?;
    p.lit(",")?;
    let system = p.string()?;
    p.lit(",")?;
    let builder = p.string()?;
    p.lit(",")?;
    let args = p.list(P::string)?;
    p.lit(",")?;
    let env = p.list(|p| {
        p.lit("(")?;
        let k = p.string()?;
        p.lit(",")?;
        let v = p.string()?;
        p.lit(")")?;
        Ok((k, v))
    })?;
    p.lit(")")?;
    Ok(Derivation {
        outputs: outputs.into_iter().collect(),
        input_drvs: input_drvs.into_iter().collect(),
        input_srcs: input_srcs.into_iter().collect(),
        system,
        builder,
        args,
        env: env.into_iter().collect(),
    })
}

/// Print a derivation in ATerm form (for round-trip tests).
pub fn print_derivation(d: &Derivation) -> String {
    fn q(s: &str) -> String {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\t' => o.push_str("\\t"),
                '\r' => o.push_str("\\r"),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
    let outs: Vec<String> = d
        .outputs
        .iter()
        .map(|(n, o)| {
            format!(
                "({},{},{},{})",
                q(n),
                q(&o.path),
                q(&o.hash_algo),
                q(&o.hash)
            )
        })
        .collect();
    let ins: Vec<String> = d
        .input_drvs
        .iter()
        .map(|(p, o)| {
            format!(
                "({},[{}])",
                q(p),
                o.iter().map(|x| q(x)).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    let srcs: Vec<String> = d.input_srcs.iter().map(|s| q(s)).collect();
    let args: Vec<String> = d.args.iter().map(|s| q(s)).collect();
    let env: Vec<String> = d
        .env
        .iter()
        .map(|(k, v)| format!("({},{})", q(k), q(v)))
        .collect();
    format!(
        "Derive([{}],[{}],[{}],{},{},[{}],[{}])",
        outs.join(","),
        ins.join(","),
        srcs.join(","),
        q(&d.system),
        q(&d.builder),
        args.join(","),
        env.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DRV: &str = r#"Derive([("out","/nix/store/aaaa-hello-2.12","","")],[("/nix/store/bbbb-glibc.drv",["out"])],["/nix/store/cccc-builder.sh"],"x86_64-linux","/bin/sh",["-c","echo \"hi\"\n"],[("configureFlags","--a --b"),("out","/nix/store/aaaa-hello-2.12")])"#;

    #[test]
    fn parses_a_derivation() {
        let d = parse_derivation(DRV).unwrap();
        assert_eq!(d.outputs["out"].path, "/nix/store/aaaa-hello-2.12");
        assert_eq!(d.input_drvs["/nix/store/bbbb-glibc.drv"].len(), 1);
        assert_eq!(d.args[1], "echo \"hi\"\n");
        assert_eq!(d.env["configureFlags"], "--a --b");
        assert_eq!(parse_derivation(&print_derivation(&d)).unwrap(), d);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse_derivation(&s);
        }

        #[test]
        fn truncations_never_panic(n in 0usize..400) {
            let cut = &DRV[..n.min(DRV.len())];
            let _ = parse_derivation(cut);
        }

        #[test]
        fn round_trips(env in proptest::collection::btree_map("[a-zA-Z]{1,8}", "\\PC{0,20}", 0..5),
                       args in proptest::collection::vec("\\PC{0,20}", 0..4)) {
            let mut d = parse_derivation(DRV).unwrap();
            d.env = env;
            d.args = args;
            prop_assert_eq!(parse_derivation(&print_derivation(&d)).unwrap(), d);
        }
    }
}
