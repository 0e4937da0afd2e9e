//! Hostile input never panics: garbage, deep nesting, huge numbers, invalid UTF-8 (as the lossy
//! strings a caller would pass), and random mutations of valid files, through loading and
//! preparing.

use std::path::Path;

use crate::composition::tests::FULL;
use crate::manifest::tests::{PING, PLACEBO};
use crate::{Composition, Event, Manifest};

/// Feeds `text` through everything that reads files. Only errors may come out.
fn feed(text: &str) {
    let manifest = Manifest::from_str(text, Path::new("m.toml"));
    let composition = Composition::from_str(text, Path::new("c.toml"));
    if let Ok(c) = &composition {
        if let Ok(m) = Manifest::from_str(PING, Path::new("ping.toml")) {
            let _ = c.prepare(&m);
        }
        if let Ok(m) = &manifest {
            let _ = c.prepare(m);
        }
    }
    for line in text.lines() {
        let _ = Event::from_stdout_line(line);
    }
    // Errors render without panicking too.
    if let Err(e) = manifest {
        let _ = e.to_string();
    }
    if let Err(e) = composition {
        let _ = e.to_string();
    }
}

#[test]
fn garbage() {
    let depth = 100_000;
    let cases = [
        String::new(),
        "\0\0\0".to_string(),
        "[".to_string(),
        "[[".to_string(),
        "=".to_string(),
        "a = ".to_string(),
        "\u{feff}name = \"bom\"".to_string(),
        "name = \"p\"\r\n[[testcases]]\r\nname = \"c\"\r\ninstances = { min = 1, max = 1 }\r\n".to_string(),
        format!("a = {}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("a = {}1{}", "{ b = ".repeat(depth), " }".repeat(depth)),
        format!("{} = 1", vec!["k"; depth].join(".")),
        format!("[{}]", vec!["t"; depth].join(".")),
        format!("[global.run.test_params]\n{} = 1", vec!["k"; 5_000].join(".")),
        "[[groups]]\nid = \"a\"\ninstances = { count = 18446744073709551615 }".to_string(),
        "[[groups]]\nid = \"a\"\ninstances = { count = 9223372036854775807 }\n[global]\ncase=\"ping\"\nrunner=\"local:exec\"\nbuilder=\"exec:rust\"".to_string(),
        "[global]\ntotal_instances = 9223372036854775807\ncase=\"ping\"\nrunner=\"local:exec\"\nbuilder=\"exec:rust\"\n[[groups]]\nid=\"a\"\ninstances={percentage=1.0}".to_string(),
        "[global]\ntotal_instances = 100000\ncase=\"ping\"\nrunner=\"local:exec\"\nbuilder=\"exec:rust\"\n[[groups]]\nid=\"a\"\ninstances={percentage=1e-300}".to_string(),
        "[global]\ntotal_instances = 3\ncase=\"ping\"\nrunner=\"local:exec\"\nbuilder=\"exec:rust\"\n[[groups]]\nid=\"a\"\ninstances={percentage=inf}".to_string(),
        "name = \"x\"\n[[testcases]]\nname = \"c\"\ninstances = { min = 0, max = 18446744073709551615 }".to_string(),
        "groups = [1, 2, 3]".to_string(),
        "runs = \"r\"".to_string(),
        "[[runs]]\n[[runs.groups]]\n[[runs.groups]]\n".to_string(),
        "testcases = [{ params = { a = 1 } }]\nname = \"x\"".to_string(),
        format!("[metadata]\nname = \"{}\"", "\u{202e}".repeat(10_000)),
        format!("[[groups]]\nid = \"{}\"", "x".repeat(1 << 16)),
        "name = \"\\u0000\\u001b[31m\"".to_string(),
    ];
    for text in &cases {
        feed(text);
    }
}

#[test]
fn invalid_utf8_as_lossy_strings() {
    let inputs: [&[u8]; 5] = [
        b"name = \"\xff\xfe\"\n",
        b"\xc3\x28 = 1",
        b"[global]\ncase = \"\xed\xa0\x80\"\n",
        b"[[groups]]\nid = \"\xf0\x28\x8c\xbc\"\ninstances = { count = 1 }\n",
        b"\x80\x81\x82\x83",
    ];
    for bytes in inputs {
        feed(&String::from_utf8_lossy(bytes));
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_valid_files() {
    const ALPHABET: &[char] =
        &['[', ']', '{', '}', '"', '=', '.', ',', '\n', '#', '0', '-', 'a', '\'', '\\', ' ', '\0', 'é'];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in [PING, PLACEBO, FULL] {
        for _ in 0..300 {
            let mut chars: Vec<char> = seed.chars().collect();
            for _ in 0..=rng.below(4) {
                let at = rng.below(chars.len());
                match rng.below(3) {
                    0 => {
                        chars.remove(at);
                    }
                    1 => chars.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                    _ => chars[at] = ALPHABET[rng.below(ALPHABET.len())],
                }
                if chars.is_empty() {
                    break;
                }
            }
            feed(&chars.into_iter().collect::<String>());
        }
    }
}

#[test]
fn random_bytes() {
    let mut rng = Rng(42);
    for _ in 0..500 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() >> 56) as u8).collect();
        feed(&String::from_utf8_lossy(&bytes));
    }
}
