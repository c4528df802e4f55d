//! `millrace serve --config FILE`: a TOML file whose keys are the `serve` flags without their
//! leading dashes (`node-id = 1`, `dead-node-timeout = "5m"`; `deploy/millrace.toml` is the
//! commented example). Precedence, highest first: flags, `MILLRACE_*` environment variables,
//! the file, the defaults.
//!
//! The file is turned into the flags it stands for and parsed by the same parser as the
//! command line, so a value in the file means exactly what the same flag means, with the same
//! bounds and the same error.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Flags a config file may not set: the file itself, and the calibration switch (a node
/// deliberately broken for the fault-injection harness must be asked for on its command line).
const NOT_IN_FILE: &[&str] = &["config", "calibration-inject-bug-unsafe"];

/// The flags (`--key=value`) that carry the settings of the config file `path` (its text
/// `text`) into `serve` (the subcommand's definition), for every key that neither a flag nor an
/// environment variable already set in `matches`.
pub fn file_flags(
    serve: &Command,
    matches: &ArgMatches,
    path: &str,
    text: &str,
) -> Result<Vec<String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{path}: not valid TOML: {}", e.message()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| {
                format!(
                    "{path}: unknown key `{key}` (the keys are the serve flags without `--`: {})",
                    known_keys(serve).join(", ")
                )
            })?;
        let from_user = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if from_user {
            continue;
        }
        if let Some(flag) = flag_for(arg, key, value).map_err(|e| format!("{path}: {e}"))? {
            flags.push(flag);
        }
    }
    Ok(flags)
}

/// Whether a config file's text sets secrets (non-empty `access-keys`): such a file must not
/// be world-readable, as a key file must not.
pub fn holds_secrets(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    match table.get("access-keys") {
        Some(toml::Value::String(s)) => !s.trim().is_empty(),
        Some(toml::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
        None => false,
    }
}

/// The keys a config file may set.
fn known_keys(serve: &Command) -> Vec<&str> {
    serve
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(Arg::get_long)
        .filter(|k| !NOT_IN_FILE.contains(k))
        .collect()
}

/// The flag for one key, or none (a switch set to `false`).
fn flag_for(arg: &Arg, key: &str, value: &toml::Value) -> Result<Option<String>, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(Some(format!("--{key}"))),
            toml::Value::Boolean(false) => Ok(None),
            _ => Err(format!("`{key}` must be true or false")),
        };
    }
    Ok(Some(format!("--{key}={}", text_of(key, value)?)))
}

/// A value as the flag would be written: strings as they are, numbers and booleans in TOML's
/// spelling, arrays joined with commas, tables as `KEY=VALUE` pairs joined with commas (so
/// `[peers]` with `1 = "node1:7101"` is `--peers=1=node1:7101`).
fn text_of(key: &str, value: &toml::Value) -> Result<String, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "`{key}` must be a string, a number, a boolean, or a list or table of them"
            )),
        }
    };
    match value {
        toml::Value::Array(items) => Ok(items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(",")),
        toml::Value::Table(t) => Ok(t
            .iter()
            .map(|(k, v)| Ok(format!("{k}={}", scalar(v)?)))
            .collect::<Result<Vec<_>, String>>()?
            .join(",")),
        v => scalar(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> Command {
        Command::new("serve")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("node_id").long("node-id"))
            .arg(
                Arg::new("zone")
                    .long("zone")
                    .env("MILLRACE_TEST_CONFIG_FILE_ZONE"),
            )
            .arg(Arg::new("peers").long("peers").default_value(""))
            .arg(
                Arg::new("timeout")
                    .long("dead-node-timeout")
                    .default_value("5m"),
            )
            .arg(
                Arg::new("throttling")
                    .long("shard-throttling")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("bug")
                    .long("calibration-inject-bug-unsafe")
                    .hide(true),
            )
    }

    fn flags(args: &[&str], text: &str) -> Result<Vec<String>, String> {
        let cmd = serve();
        let matches = cmd
            .clone()
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("parses");
        file_flags(&cmd, &matches, "test.toml", text)
    }

    #[test]
    fn files_with_access_keys_hold_secrets() {
        assert!(holds_secrets("access-keys = \"A:s\""));
        assert!(holds_secrets("access-keys = [\"A:s\"]"));
        assert!(!holds_secrets("access-keys = \"\"\nzone = \"a\""));
        assert!(!holds_secrets("zone = \"a\""));
    }

    #[test]
    fn keys_become_flags_unless_a_flag_set_them() {
        let text = r#"
            node-id = 2
            zone = "b"
            dead-node-timeout = "30s"
            shard-throttling = true
            [peers]
            1 = "node1:7101"
            2 = "node2:7101"
        "#;
        let mut got = flags(&[], text).unwrap();
        got.sort();
        assert_eq!(
            got,
            [
                "--dead-node-timeout=30s",
                "--node-id=2",
                "--peers=1=node1:7101,2=node2:7101",
                "--shard-throttling",
                "--zone=b",
            ]
        );
        // A flag on the command line wins over the file.
        let got = flags(&["--node-id", "7"], "node-id = 2").unwrap();
        assert!(got.is_empty(), "{got:?}");
        // A switch set to false adds nothing; lists join with commas.
        assert!(flags(&[], "shard-throttling = false").unwrap().is_empty());
        assert_eq!(
            flags(&[], r#"peers = ["1=a:1", "2=b:2"]"#).unwrap(),
            ["--peers=1=a:1,2=b:2"]
        );
    }

    #[test]
    fn an_environment_variable_wins_over_the_file() {
        std::env::set_var("MILLRACE_TEST_CONFIG_FILE_ZONE", "from-env");
        let got = flags(&[], r#"zone = "from-file""#);
        std::env::remove_var("MILLRACE_TEST_CONFIG_FILE_ZONE");
        assert!(got.unwrap().is_empty());
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        let e = flags(&[], "nodeid = 2").unwrap_err();
        assert!(
            e.contains("unknown key `nodeid`") && e.contains("node-id"),
            "{e}"
        );
        // The calibration switch and the file itself are not keys.
        assert!(flags(&[], r#"calibration-inject-bug-unsafe = "x""#).is_err());
        assert!(flags(&[], r#"config = "other.toml""#).is_err());
        let e = flags(&[], r#"shard-throttling = "yes""#).unwrap_err();
        assert!(
            e.contains("`shard-throttling` must be true or false"),
            "{e}"
        );
        let e = flags(&[], "node-id = [[1]]").unwrap_err();
        assert!(e.contains("`node-id` must be"), "{e}");
        let e = flags(&[], "node-id = ").unwrap_err();
        assert!(e.starts_with("test.toml: not valid TOML"), "{e}");
    }
}
