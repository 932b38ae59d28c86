//! Fernet (spec version 0x80), byte-compatible with Python's `cryptography`.
//!
//! Threat: data read or silently altered by whoever gets the ciphertext (a
//! stolen database, backup or file). Guarantee: a token is
//! `base64url(0x80 ‖ ts ‖ IV ‖ AES-128-CBC(PKCS#7) ‖ HMAC-SHA256)`; nothing is
//! decrypted before the HMAC over everything before it has been checked in
//! constant time (verification order: decode → version → TTL/clock skew →
//! HMAC → decrypt → unpad), so a tampered token gives [`FernetError::InvalidToken`]
//! and never plaintext. Without a TTL (as Python's `decrypt(token)`) the
//! timestamp is not checked at all.
//!
//! Files are handled in bounded memory: [`Key::encrypt_stream`] reads the
//! input once and writes the base64 token in chunks; [`Key::decrypt_file`]
//! checks the HMAC in a first streaming pass, then decrypts in a second pass
//! into a temporary file beside the output (recomputing the HMAC) and renames
//! it only on success, so a failure leaves no output file.
//!
//! Not covered: key storage (see `keyring` and the CLI's key files), and
//! replay (a valid token stays valid unless a TTL is given).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aes::Aes128;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;
type Enc = cbc::Encryptor<Aes128>;
type Dec = cbc::Decryptor<Aes128>;

const VERSION: u8 = 0x80;
/// Accepted clock skew for tokens from the future (as `cryptography` and fernet-rs).
pub const MAX_CLOCK_SKEW: u64 = 60;
const BLOCK: usize = 16;
const HEADER: usize = 1 + 8 + 16;
const TAG: usize = 32;
/// The shortest valid token: header, one block, tag.
const MIN_RAW: usize = HEADER + BLOCK + TAG;
/// Streaming chunk (a multiple of 16 and of 3 bytes).
const CHUNK: usize = 48 * 1024;

/// Fernet failures.
#[derive(Debug, thiserror::Error)]
pub enum FernetError {
    /// The key is not url-safe base64 of 32 bytes (configuration).
    #[error("invalid Fernet key: expected url-safe base64 of 32 bytes")]
    InvalidKey,
    /// The token was rejected (peer: tampered, corrupted, wrong key, expired).
    #[error("invalid token ({0})")]
    InvalidToken(&'static str),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn invalid(why: &'static str) -> FernetError {
    FernetError::InvalidToken(why)
}

/// Map an I/O error from the base64 decoder (InvalidData) to an invalid token.
fn decode_io(e: std::io::Error) -> FernetError {
    match e.kind() {
        ErrorKind::InvalidData => invalid("invalid base64"),
        ErrorKind::UnexpectedEof => invalid("truncated"),
        _ => FernetError::Io(e),
    }
}

/// Lenient padding for keys (Python's `Fernet.generate_key()` pads; some
/// tools strip it).
const KEY_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Fernet key: 16 bytes of HMAC key, then 16 bytes of AES key.
#[derive(Clone)]
pub struct Key {
    signing: [u8; 16],
    encryption: [u8; 16],
}

impl Drop for Key {
    fn drop(&mut self) {
        self.signing.zeroize();
        self.encryption.zeroize();
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Key {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let k = Key::from_bytes(&b);
        b.zeroize();
        k
    }

    fn from_bytes(b: &[u8; 32]) -> Key {
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        signing.copy_from_slice(&b[..16]);
        encryption.copy_from_slice(&b[16..]);
        Key {
            signing,
            encryption,
        }
    }

    /// Parse url-safe base64 of 32 bytes (or the standard alphabet's `+/`);
    /// blanks and line ends around it are ignored (key files written by
    /// editors and by Python).
    pub fn from_base64(s: &str) -> Result<Key, FernetError> {
        // as Python's `Fernet(key)` reads a key file's text: blanks and line
        // ends around it, and the standard alphabet's `+/`, are accepted
        let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
        let mut text: Vec<u8> = s
            .bytes()
            .map(|b| match b {
                b'+' => b'-',
                b'/' => b'_',
                b => b,
            })
            .collect();
        let decoded = KEY_B64.decode(&text);
        text.zeroize();
        let mut raw = decoded.map_err(|_| FernetError::InvalidKey)?;
        let out = <[u8; 32]>::try_from(raw.as_slice())
            .map(|b| Key::from_bytes(&b))
            .map_err(|_| FernetError::InvalidKey);
        raw.zeroize();
        out
    }

    /// A public name of the key: SHA-256 of a label and the key, in hex.
    /// Instances sharing a database record it per key id, so a keyring
    /// whose `k1` is not the others' `k1` is refused at start (a 256-bit
    /// random key cannot be found from its hash).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"frenly key fingerprint v1\0");
        h.update(self.signing);
        h.update(self.encryption);
        hex::encode(h.finalize())
    }

    /// The key as url-safe base64 with padding (Python's format).
    pub fn to_base64(&self) -> String {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&self.signing);
        b[16..].copy_from_slice(&self.encryption);
        let s = URL_SAFE.encode(b);
        b.zeroize();
        s
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.signing).unwrap_or_else(|_| unreachable_hmac())
    }

    /// Encrypt `msg` into a token (random IV from the thread's CSPRNG, which
    /// the OS seeds; current time).
    pub fn encrypt(&self, msg: &[u8]) -> String {
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        self.encrypt_at(msg, now_secs(), iv)
    }

    /// Encrypt with a given timestamp and IV (the spec's `generate` vectors).
    pub(crate) fn encrypt_at(&self, msg: &[u8], ts: u64, iv: [u8; 16]) -> String {
        let ct = Enc::new(&self.encryption.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(msg);
        let mut raw = Vec::with_capacity(HEADER + ct.len() + TAG);
        raw.push(VERSION);
        raw.extend_from_slice(&ts.to_be_bytes());
        raw.extend_from_slice(&iv);
        raw.extend_from_slice(&ct);
        let tag = self.mac().chain_update(&raw).finalize().into_bytes();
        raw.extend_from_slice(&tag);
        URL_SAFE.encode(raw)
    }

    /// Decrypt without a TTL (Python's `decrypt(token)`: the timestamp is not checked).
    pub fn decrypt(&self, token: &str) -> Result<Vec<u8>, FernetError> {
        self.decrypt_at(token, None, now_secs())
    }

    /// Decrypt, rejecting tokens older than `ttl` seconds or from the future.
    pub fn decrypt_with_ttl(&self, token: &str, ttl: u64) -> Result<Vec<u8>, FernetError> {
        self.decrypt_at(token, Some(ttl), now_secs())
    }

    /// Decrypt as at time `now` (the spec's `verify`/`invalid` vectors).
    pub(crate) fn decrypt_at(
        &self,
        token: &str,
        ttl: Option<u64>,
        now: u64,
    ) -> Result<Vec<u8>, FernetError> {
        let raw = URL_SAFE
            .decode(token.as_bytes())
            .map_err(|_| invalid("invalid base64"))?;
        let ts = check_header(&raw)?;
        check_time(ts, ttl, now)?;
        check_length(raw.len())?;
        let (signed, tag) = raw.split_at(raw.len() - TAG);
        self.mac()
            .chain_update(signed)
            .verify_slice(tag)
            .map_err(|_| invalid("incorrect MAC"))?;
        let (header, ciphertext) = signed
            .split_at_checked(HEADER)
            .ok_or_else(|| invalid("token too short"))?;
        let iv: [u8; 16] = header
            .get(9..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| invalid("token too short"))?;
        Dec::new(&self.encryption.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .map_err(|_| invalid("padding error"))
    }

    /// Encrypt everything `input` yields into a token written to `output`,
    /// in bounded memory (one chunk at a time). Returns the plaintext length.
    // Buffer indices are bounded by construction (`fill`, `full`, `n` and
    // `keep` never exceed the buffer's length); no index comes from input.
    #[allow(clippy::indexing_slicing)]
    pub fn encrypt_stream<R: Read, W: Write>(
        &self,
        mut input: R,
        output: W,
    ) -> Result<u64, FernetError> {
        let mut iv = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let mut enc = Enc::new(&self.encryption.into(), &iv.into());
        let mut mac = self.mac();
        let mut out = base64::write::EncoderWriter::new(output, &URL_SAFE);
        let mut header = [0u8; HEADER];
        header[0] = VERSION;
        header[1..9].copy_from_slice(&now_secs().to_be_bytes());
        header[9..].copy_from_slice(&iv);
        mac.update(&header);
        out.write_all(&header)?;
        let mut buf = vec![0u8; CHUNK];
        let mut fill = 0usize;
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf[fill..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            total += n as u64;
            fill += n;
            if n != 0 && fill < buf.len() {
                continue;
            }
            let full = fill / BLOCK * BLOCK;
            encrypt_blocks(&mut enc, &mut buf[..full]);
            mac.update(&buf[..full]);
            out.write_all(&buf[..full])?;
            buf.copy_within(full..fill, 0);
            fill -= full;
            if n == 0 {
                break;
            }
        }
        // PKCS#7: the remainder (0..15 bytes) plus padding is the last block.
        let pad = (BLOCK - fill) as u8;
        buf[fill..BLOCK].fill(pad);
        encrypt_blocks(&mut enc, &mut buf[..BLOCK]);
        mac.update(&buf[..BLOCK]);
        out.write_all(&buf[..BLOCK])?;
        out.write_all(&mac.finalize().into_bytes())?;
        let mut inner = out.finish()?;
        inner.flush()?;
        Ok(total)
    }

    /// Encrypt the file `input` into `output` (through a temporary file
    /// renamed on success). `progress` is told how many input bytes were read.
    pub fn encrypt_file(
        &self,
        input: &Path,
        output: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<u64, FernetError> {
        regular_input(input)?;
        let src = File::open(input)?;
        progress.set_length(src.metadata()?.len());
        let tmp = TempOut::create(output)?;
        let n = self.encrypt_stream(
            progress.wrap_read(src),
            std::io::BufWriter::with_capacity(CHUNK, &tmp.file),
        )?;
        tmp.persist()?;
        Ok(n)
    }

    /// Decrypt the token file `input` into `output` in bounded memory: pass 1
    /// checks the HMAC, pass 2 decrypts into a temporary file (checking the
    /// HMAC again, so a file changed between the passes is refused too) that
    /// is renamed to `output` only when everything checked out. No TTL (as
    /// the guide's FileEncryption).
    // Buffer indices are bounded by construction (`fill`, `full`, `n` and
    // `keep` never exceed the buffer's length); no index comes from input.
    #[allow(clippy::indexing_slicing)]
    pub fn decrypt_file(
        &self,
        input: &Path,
        output: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<u64, FernetError> {
        regular_input(input)?;
        let mut file = File::open(input)?;
        let token_len = token_length(&mut file)?;
        progress.set_length(token_len.saturating_mul(2));
        // Pass 1: version, length, HMAC.
        let raw_len = raw_length(&mut file, token_len)?;
        let mut r = RawReader::new(&file, token_len, progress)?;
        let mut header = [0u8; HEADER];
        r.read_exact(&mut header).map_err(decode_io)?;
        check_header(&header)?;
        check_length_u64(raw_len)?;
        let body_len = raw_len - (HEADER + TAG) as u64;
        let mut mac = self.mac();
        mac.update(&header);
        let mut buf = vec![0u8; CHUNK];
        let mut left = body_len;
        while left > 0 {
            let n = (left.min(CHUNK as u64)) as usize;
            r.read_exact(&mut buf[..n]).map_err(decode_io)?;
            mac.update(&buf[..n]);
            left -= n as u64;
        }
        let mut tag = [0u8; TAG];
        r.read_exact(&mut tag).map_err(decode_io)?;
        r.expect_end()?;
        mac.verify_slice(&tag)
            .map_err(|_| invalid("incorrect MAC"))?;

        // Pass 2: decrypt into a temporary file, withholding the last block
        // until the padding is checked.
        let mut r = RawReader::new(&file, token_len, progress)?;
        r.read_exact(&mut header).map_err(decode_io)?;
        let mut mac = self.mac();
        mac.update(&header);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&header[9..]);
        let mut dec = Dec::new(&self.encryption.into(), &iv.into());
        let tmp = TempOut::create(output)?;
        let mut w = std::io::BufWriter::with_capacity(CHUNK, &tmp.file);
        let mut left = body_len - BLOCK as u64;
        let mut written = 0u64;
        while left > 0 {
            let n = (left.min(CHUNK as u64)) as usize;
            r.read_exact(&mut buf[..n]).map_err(decode_io)?;
            mac.update(&buf[..n]);
            decrypt_blocks(&mut dec, &mut buf[..n]);
            w.write_all(&buf[..n])?;
            written += n as u64;
            left -= n as u64;
        }
        let mut last = [0u8; BLOCK];
        r.read_exact(&mut last).map_err(decode_io)?;
        mac.update(&last);
        r.read_exact(&mut tag).map_err(decode_io)?;
        mac.verify_slice(&tag)
            .map_err(|_| invalid("the file changed while it was read"))?;
        decrypt_blocks(&mut dec, &mut last);
        let keep = unpad(&last)?;
        w.write_all(&last[..keep])?;
        w.flush()?;
        drop(w);
        tmp.persist()?;
        Ok(written + keep as u64)
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA256 takes keys of any length; `new_from_slice` never fails.
    // Fall back to a fixed key only to satisfy the type (never reached).
    <HmacSha256 as Mac>::new(&Default::default())
}

fn encrypt_blocks(enc: &mut Enc, data: &mut [u8]) {
    for b in data.chunks_exact_mut(BLOCK) {
        enc.encrypt_block_mut(GenericArray::from_mut_slice(b));
    }
}

fn decrypt_blocks(dec: &mut Dec, data: &mut [u8]) {
    for b in data.chunks_exact_mut(BLOCK) {
        dec.decrypt_block_mut(GenericArray::from_mut_slice(b));
    }
}

/// PKCS#7: how many bytes of the last block are data.
fn unpad(block: &[u8; BLOCK]) -> Result<usize, FernetError> {
    let p = usize::from(block.last().copied().unwrap_or(0));
    let keep = BLOCK.checked_sub(p).filter(|_| p != 0);
    match keep.and_then(|k| block.get(k..)) {
        Some(pad) if pad.iter().all(|&b| usize::from(b) == p) => Ok(BLOCK - p),
        _ => Err(invalid("padding error")),
    }
}

/// Version byte and timestamp.
fn check_header(raw: &[u8]) -> Result<u64, FernetError> {
    if raw.first() != Some(&VERSION) {
        return Err(invalid("unknown version"));
    }
    let ts: [u8; 8] = raw
        .get(1..9)
        .and_then(|s| s.try_into().ok())
        .ok_or(invalid("too short"))?;
    Ok(u64::from_be_bytes(ts))
}

fn check_time(ts: u64, ttl: Option<u64>, now: u64) -> Result<(), FernetError> {
    if let Some(ttl) = ttl {
        if ts.saturating_add(ttl) < now {
            return Err(invalid("expired"));
        }
        if now.saturating_add(MAX_CLOCK_SKEW) < ts {
            return Err(invalid("timestamp too far in the future"));
        }
    }
    Ok(())
}

fn check_length(raw_len: usize) -> Result<(), FernetError> {
    check_length_u64(raw_len as u64)
}

fn check_length_u64(raw_len: u64) -> Result<(), FernetError> {
    if raw_len < MIN_RAW as u64 {
        return Err(invalid("too short"));
    }
    if !(raw_len - (HEADER + TAG) as u64).is_multiple_of(BLOCK as u64) {
        return Err(invalid("payload size not a multiple of the block size"));
    }
    Ok(())
}

/// The token's length in the file, without one trailing newline.
fn token_length(file: &mut File) -> Result<u64, FernetError> {
    let mut len = file.metadata()?.len();
    for _ in 0..2 {
        if len == 0 {
            break;
        }
        file.seek(SeekFrom::Start(len - 1))?;
        let mut b = [0u8; 1];
        file.read_exact(&mut b)?;
        if b[0] == b'\n' || b[0] == b'\r' {
            len -= 1;
        } else {
            break;
        }
    }
    if len == 0 || len % 4 != 0 {
        return Err(invalid("invalid base64"));
    }
    Ok(len)
}

/// The decoded length of a padded base64 text of `token_len` characters.
fn raw_length(file: &mut File, token_len: u64) -> Result<u64, FernetError> {
    file.seek(SeekFrom::Start(token_len - 2))?;
    let mut tail = [0u8; 2];
    file.read_exact(&mut tail)?;
    let pad = tail.iter().filter(|&&b| b == b'=').count() as u64;
    Ok(token_len / 4 * 3 - pad)
}

/// Decoded bytes of the first `token_len` characters of a token file.
struct RawReader<'a> {
    inner: base64::read::DecoderReader<
        'static,
        GeneralPurpose,
        std::io::BufReader<indicatif::ProgressBarIter<std::io::Take<&'a File>>>,
    >,
}

impl<'a> RawReader<'a> {
    fn new(
        mut file: &'a File,
        token_len: u64,
        progress: &indicatif::ProgressBar,
    ) -> Result<Self, FernetError> {
        file.seek(SeekFrom::Start(0))?;
        let src = progress.wrap_read(file.take(token_len));
        Ok(RawReader {
            inner: base64::read::DecoderReader::new(
                std::io::BufReader::with_capacity(CHUNK, src),
                &URL_SAFE,
            ),
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)
    }

    fn expect_end(&mut self) -> Result<(), FernetError> {
        let mut b = [0u8; 1];
        match self.inner.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err(invalid("trailing data")),
            Err(e) => Err(decode_io(e)),
        }
    }
}

/// Only a regular file (or a link to one) is read: `/dev/zero` would be
/// read until the disk fills, and opening a pipe waits for a writer.
fn regular_input(path: &Path) -> std::io::Result<()> {
    if std::fs::metadata(path)?.is_file() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{} is not a regular file", path.display()),
    ))
}

/// A temporary file beside the final output, removed unless persisted.
///
/// Where the kernel offers it (`O_TMPFILE`, with `/proc/self/fd` to name it
/// later), the file has no name while it is written: a run killed half-way
/// (Ctrl-C, SIGTERM, SIGKILL: no destructor runs) leaves nothing behind,
/// not even part of a decrypted plaintext. It is named only once complete,
/// and renamed over the output at once. Elsewhere it is a hidden
/// `.<name>.<random>.tmp` beside the output, removed on every error.
///
/// The output is replaced by a rename, so an output that exists must be a
/// regular file: a rename over `/dev/null`, `/dev/stdout` or a symbolic
/// link would replace the device or the link itself (as root, `/dev/null`
/// for every process on the host) instead of writing through it.
struct TempOut {
    file: File,
    /// The temporary file's name, once it has one.
    path: Option<PathBuf>,
    dir: PathBuf,
    name: String,
    target: PathBuf,
    done: bool,
}

impl TempOut {
    fn create(target: &Path) -> std::io::Result<TempOut> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::symlink_metadata(target) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} exists and is not a regular file (a device, a link, a pipe or a directory); it is never replaced",
                        target.display()
                    ),
                ));
            }
            _ => {}
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let (file, path) = match anonymous_file(&dir) {
            Some(f) => (f, None),
            None => {
                let path = temp_name(&dir, &name);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                (f, Some(path))
            }
        };
        Ok(TempOut {
            file,
            path,
            dir,
            name,
            target: target.to_path_buf(),
            done: false,
        })
    }

    fn persist(mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        self.file.sync_all()?;
        let path = match self.path.clone() {
            Some(p) => p,
            None => {
                let p = temp_name(&self.dir, &self.name);
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    format!("/proc/self/fd/{}", self.file.as_raw_fd()),
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )?;
                self.path = Some(p.clone());
                p
            }
        };
        std::fs::rename(&path, &self.target)?;
        self.done = true;
        Ok(())
    }
}

/// A file in `dir` with no name (`O_TMPFILE`, mode 0600), when the kernel
/// and the file system offer one and `/proc/self/fd` can name it later.
fn anonymous_file(dir: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()
    .map(File::from)
}

fn temp_name(dir: &Path, name: &str) -> PathBuf {
    let mut rnd = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut rnd);
    dir.join(format!(".{name}.{}.tmp", hex::encode(rnd)))
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.done {
            if let Some(p) = &self.path {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
