//! The guide's FileEncryption and DataEncryption as commands, against
//! Python's `cryptography` both ways (issue 4).

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::common::run_cli;

fn python(script: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PY_ENCRYPT_FILE: &str = "import sys\nfrom cryptography.fernet import Fernet\n\
key = open(sys.argv[1], 'rb').read()\nf = Fernet(key)\n\
data = open(sys.argv[2], 'rb').read()\nopen(sys.argv[3], 'wb').write(f.encrypt(data))\n";
const PY_DECRYPT_FILE: &str = "import sys\nfrom cryptography.fernet import Fernet\n\
key = open(sys.argv[1], 'rb').read()\nf = Fernet(key)\n\
tok = open(sys.argv[2], 'rb').read()\nopen(sys.argv[3], 'wb').write(f.decrypt(tok))\n";

fn write_pattern(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let block: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn files_interoperate_with_python_cryptography_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("file.key");
    for (name, len) in [
        ("empty", 0usize),
        ("small", 1000),
        ("big", 64 * 1024 * 1024 + 17),
    ] {
        let plain = d.join(format!("{name}.bin"));
        write_pattern(&plain, len);
        // Frenly encrypts (generating the key on first use), Python decrypts
        let enc = d.join(format!("{name}.frenly.enc"));
        let (code, _, err) = run_cli(
            &["encrypt-file", p(&plain), p(&enc), "--key-file", p(&key)],
            None,
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let back = d.join(format!("{name}.py.dec"));
        let (code, _, err) = python(PY_DECRYPT_FILE, &[p(&key), p(&enc), p(&back)]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            same(&plain, &back),
            "{name}: Python read back something else"
        );
        // Python encrypts, Frenly decrypts
        let enc = d.join(format!("{name}.py.enc"));
        let (code, _, err) = python(PY_ENCRYPT_FILE, &[p(&key), p(&plain), p(&enc)]);
        assert_eq!(code, 0, "{err}");
        let back = d.join(format!("{name}.frenly.dec"));
        let (code, _, err) = run_cli(
            &["decrypt-file", p(&enc), p(&back), "--key-file", p(&key)],
            None,
            &[],
        );
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            same(&plain, &back),
            "{name}: Frenly read back something else"
        );
        for f in [plain, back, enc] {
            std::fs::remove_file(f).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // the key file is the url-safe base64 key Python generates/reads
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.len(), 44);
}

/// A key file that is also the output (or input) is refused before anything
/// is written (before: the key was overwritten by the token, exit 0, and
/// nothing could be decrypted again); a key file that is a FIFO is refused,
/// not waited on; key text is read as Python's `Fernet` reads it.
#[test]
fn key_files_are_kept_apart_regular_and_read_as_python_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = d.join("plain");
    write_pattern(&plain, 1000);
    let key = d.join("k.key");
    // to be generated, and also the output: nothing generated, nothing written
    let (code, _, err) = run_cli(
        &["encrypt-file", p(&plain), p(&key), "--key-file", p(&key)],
        None,
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("also the output"), "{err}");
    assert!(!key.exists());
    // the Fernet specification's key: both `-` and `_` in it
    let spec = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    std::fs::write(&key, spec).unwrap();
    let enc = d.join("enc");
    let (code, _, err) = run_cli(
        &["encrypt-file", p(&plain), p(&enc), "--key-file", p(&key)],
        None,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    for args in [
        ["encrypt-file", p(&plain), p(&key), "--key-file", p(&key)],
        ["decrypt-file", p(&enc), p(&key), "--key-file", p(&key)],
        ["encrypt-file", p(&key), p(&enc), "--key-file", p(&key)],
    ] {
        let (code, _, err) = run_cli(&args, None, &[]);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), spec, "{args:?}");
    }
    // the same key as Python's `Fernet` also reads it: blanks around it,
    // the standard alphabet
    let loose = d.join("loose.key");
    std::fs::write(
        &loose,
        format!("  {}\n\n", spec.replace('-', "+").replace('_', "/")),
    )
    .unwrap();
    let out = d.join("out");
    let (code, _, err) = run_cli(
        &["decrypt-file", p(&enc), p(&out), "--key-file", p(&loose)],
        None,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(same(&plain, &out));
    // a FIFO in the key file's place is refused at once
    let fifo = d.join("fifo.key");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, _, err) = run_cli(
        &["decrypt-file", p(&enc), p(&out), "--key-file", p(&fifo)],
        None,
        &[],
    );
    assert_eq!(code, 1, "{err}");
}

#[test]
fn tampered_files_and_wrong_keys_fail_cleanly_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k");
    let other = d.join("other");
    let plain = d.join("plain");
    write_pattern(&plain, 300_000);
    let enc = d.join("enc");
    assert_eq!(
        run_cli(
            &["encrypt-file", p(&plain), p(&enc), "--key-file", p(&key)],
            None,
            &[]
        )
        .0,
        0
    );
    // a different, valid key
    let (code, _, _) = run_cli(
        &[
            "encrypt-file",
            p(&plain),
            p(&d.join("x")),
            "--key-file",
            p(&other),
        ],
        None,
        &[],
    );
    assert_eq!(code, 0);
    let out = d.join("out");
    let (code, _, err) = run_cli(
        &["decrypt-file", p(&enc), p(&out), "--key-file", p(&other)],
        None,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a valid Fernet token"), "{err}");
    assert!(!out.exists());
    // flip one byte at several places: header, body, tag; truncate; append
    let token = std::fs::read(&enc).unwrap();
    let mut cases = Vec::new();
    for i in [3, 40, token.len() / 2, token.len() - 5] {
        let mut t = token.clone();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        cases.push(t);
    }
    cases.push(token[..token.len() - 4].to_vec());
    cases.push([token.clone(), b"AAAA".to_vec()].concat());
    cases.push(b"not a token at all".to_vec());
    cases.push(Vec::new());
    for (i, t) in cases.into_iter().enumerate() {
        let bad = d.join("bad");
        std::fs::write(&bad, t).unwrap();
        let (code, _, err) = run_cli(
            &["decrypt-file", p(&bad), p(&out), "--key-file", p(&key)],
            None,
            &[],
        );
        assert_eq!(code, 1, "case {i}");
        assert_eq!(err.trim().lines().count(), 1, "case {i}: {err}");
        assert!(!err.contains("panick"), "{err}");
        assert!(!out.exists(), "case {i} left an output file");
    }
    // an output that is a symbolic link or a pipe is never replaced (a
    // rename over /dev/null as root replaced the device for the whole
    // host), and only a regular file is read as input
    let target = d.join("target.txt");
    std::fs::write(&target, b"keep").unwrap();
    let link = d.join("link.out");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (cmd, input, output) in [
        ("decrypt-file", &enc, &link),
        ("encrypt-file", &plain, &link),
        ("decrypt-file", &enc, &fifo),
        ("encrypt-file", &fifo, &out),
        ("decrypt-file", &fifo, &out),
    ] {
        let (code, _, err) = run_cli(
            &[cmd, p(input), p(output), "--key-file", p(&key)],
            None,
            &[],
        );
        assert_eq!(code, 1, "{cmd} {input:?} {output:?}");
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(!out.exists());
    std::fs::remove_file(&fifo).unwrap();
    // no temporary files left behind
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // an input that does not exist is named in the one error line
    let gone = d.join("no-such-input");
    for cmd in ["encrypt-file", "decrypt-file"] {
        let (code, _, err) = run_cli(&[cmd, p(&gone), p(&out), "--key-file", p(&key)], None, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("no-such-input"), "{cmd}: {err}");
        assert!(!out.exists());
    }
    // decrypt never creates a key
    let (code, _, _) = run_cli(
        &[
            "decrypt-file",
            p(&enc),
            p(&out),
            "--key-file",
            p(&d.join("missing")),
        ],
        None,
        &[],
    );
    assert_eq!(code, 1);
    assert!(!d.join("missing").exists());
}

const PY_FIELD: &str = "import sys, base64\nfrom cryptography.fernet import Fernet\n\
f = Fernet(open(sys.argv[1], 'rb').read())\n\
if sys.argv[2] == 'enc':\n    print(base64.urlsafe_b64encode(f.encrypt(sys.argv[3].encode())).decode())\n\
else:\n    print(f.decrypt(base64.urlsafe_b64decode(sys.argv[3].encode())).decode())\n";

#[test]
fn fields_interoperate_with_the_guides_data_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("field.key");
    let k = p(&key);
    let value = "héllo wörld 1234-5678";
    let (code, enc, err) = run_cli(&["encrypt-field", value, "--key-file", k], None, &[]);
    assert_eq!(code, 0, "{err}");
    let enc = enc.trim().to_string();
    let (code, out, err) = python(PY_FIELD, &[k, "dec", &enc]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim_end_matches('\n'), value);
    let (code, penc, _) = python(PY_FIELD, &[k, "enc", value]);
    assert_eq!(code, 0);
    // from the argument and from stdin
    let (code, out, err) = run_cli(&["decrypt-field", penc.trim(), "--key-file", k], None, &[]);
    assert_eq!((code, out.trim_end_matches('\n')), (0, value), "{err}");
    let (code, out, _) = run_cli(&["decrypt-field", "--key-file", k], Some(&penc), &[]);
    assert_eq!((code, out.trim_end_matches('\n')), (0, value));
    let (code, enc2, _) = run_cli(
        &["encrypt-field", "--key-file", k],
        Some("from stdin\n"),
        &[],
    );
    assert_eq!(code, 0);
    let (_, out, _) = python(PY_FIELD, &[k, "dec", enc2.trim()]);
    assert_eq!(out.trim_end_matches('\n'), "from stdin");
    // tampered value
    let mut bad = enc.clone().into_bytes();
    bad[30] = if bad[30] == b'A' { b'B' } else { b'A' };
    let (code, out, err) = run_cli(
        &[
            "decrypt-field",
            std::str::from_utf8(&bad).unwrap(),
            "--key-file",
            k,
        ],
        None,
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `encrypt-file` and `decrypt-file` killed half-way (SIGKILL: no
/// destructor runs; Ctrl-C and SIGTERM end the process the same way) leave
/// no output and no temporary file: the file being written has no name
/// until it is complete (it used to be a hidden `.out.<random>.tmp`, for
/// decrypt holding part of the plaintext).
#[test]
fn a_run_killed_half_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k.key");
    let plain = d.join("plain.bin");
    write_pattern(&plain, 24 << 20);
    let enc = d.join("plain.enc");
    let (code, _, err) = run_cli(
        &["encrypt-file", p(&plain), p(&enc), "--key-file", p(&key)],
        None,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let before: std::collections::BTreeSet<String> = names(d);
    for (cmd, input) in [("encrypt-file", &plain), ("decrypt-file", &enc)] {
        let out = d.join("out.bin");
        let mut child = Command::new(crate::common::BIN)
            .args([cmd, p(input), p(&out), "--key-file", p(&key)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // well into the work: 24 MiB take over a second in a debug build
        std::thread::sleep(std::time::Duration::from_millis(150));
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(!status.success(), "{cmd} finished before it was killed");
        assert_eq!(names(d), before, "{cmd} left files behind");
    }
}

fn names(d: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
