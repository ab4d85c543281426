//! Streaming AEAD for files (ENC-2, FIL-1): the plaintext is cut into
//! fixed-size chunks, each sealed with AES-256-GCM under the file's own key
//! and a nonce made of the chunk's index and a "last chunk" flag (the STREAM
//! construction). Reordered, altered, dropped or appended chunks fail to
//! open, and so does an object cut at a chunk boundary, because its new last
//! chunk was not sealed as the last one.
//!
//! Object layout: `SRF1` · chunk size (u32, big-endian) · chunks, each the
//! sealed plaintext followed by its 16-byte tag.

use super::CryptoError;
use super::aead::{DataKey, NONCE_BYTES, TAG_BYTES};

const MAGIC: &[u8; 4] = b"SRF1";
pub const HEADER_BYTES: usize = 8;
/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
const MIN_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 16 * 1024 * 1024;

fn nonce(counter: u64, last: bool) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

fn header(chunk: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..4].copy_from_slice(MAGIC);
    h[4..].copy_from_slice(&(chunk as u32).to_be_bytes());
    h
}

/// The size of the object that `plaintext` bytes become.
pub fn sealed_size(plaintext: u64) -> u64 {
    let chunk = CHUNK_BYTES as u64;
    let chunks = plaintext.div_ceil(chunk).max(1);
    HEADER_BYTES as u64 + plaintext + chunks * TAG_BYTES as u64
}

/// Seals a plaintext stream chunk by chunk. Plaintext is copied once, into
/// the output, and sealed there in place.
pub struct Sealer {
    key: DataKey,
    counter: u64,
    out: Vec<u8>,
    /// Where the chunk still being filled starts in `out`.
    open: usize,
}

impl Sealer {
    pub fn new(key: DataKey) -> Sealer {
        let mut out = Vec::with_capacity(HEADER_BYTES + CHUNK_BYTES + TAG_BYTES);
        out.extend_from_slice(&header(CHUNK_BYTES));
        Sealer {
            key,
            counter: 0,
            open: out.len(),
            out,
        }
    }

    /// Takes more plaintext. A chunk is sealed only once more data follows
    /// it, so the last one can be marked as such by [`Sealer::finish`].
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.out.len() - self.open == CHUNK_BYTES {
                self.seal_open(false);
            }
            let take = (CHUNK_BYTES - (self.out.len() - self.open)).min(data.len());
            self.out.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    /// How many sealed bytes are ready to be taken.
    pub fn ready(&self) -> usize {
        self.open
    }

    /// Takes the sealed bytes so far; the chunk being filled stays, moved
    /// to a fresh buffer of `capacity`.
    pub fn take_sealed(&mut self, capacity: usize) -> Vec<u8> {
        let mut fresh = Vec::with_capacity(capacity.max(self.out.len() - self.open));
        fresh.extend_from_slice(&self.out[self.open..]);
        let mut sealed = std::mem::replace(&mut self.out, fresh);
        sealed.truncate(self.open);
        self.open = 0;
        sealed
    }

    /// Seals what is left as the last chunk (possibly empty) and returns
    /// everything not yet taken.
    pub fn finish(mut self) -> Vec<u8> {
        self.seal_open(true);
        self.out
    }

    fn seal_open(&mut self, last: bool) {
        let tag = self.key.seal_in_place(
            &nonce(self.counter, last),
            &header(CHUNK_BYTES),
            &mut self.out[self.open..],
        );
        self.out.extend_from_slice(&tag);
        self.open = self.out.len();
        self.counter += 1;
    }
}

/// Opens a sealed stream; fails on the first chunk that does not verify.
pub struct Opener {
    key: DataKey,
    counter: u64,
    buf: Vec<u8>,
    chunk: Option<usize>,
    /// Open the whole chunks of one piece on two threads.
    parallel: bool,
}

impl Opener {
    pub fn new(key: DataKey) -> Opener {
        Opener {
            key,
            counter: 0,
            buf: Vec::new(),
            chunk: None,
            parallel: false,
        }
    }

    /// An opener that splits the whole chunks of each piece between this
    /// thread and one more. Chunks are independent (each has its own nonce),
    /// so this only pays where a core would otherwise wait: checking a copy
    /// before it is served, while nothing else runs.
    pub fn parallel(key: DataKey) -> Opener {
        Opener {
            parallel: true,
            ..Opener::new(key)
        }
    }

    /// Takes more stored bytes; appends verified plaintext to `out`. Whole
    /// chunks open straight from `data` (one copy, into `out`); only a
    /// chunk cut by the end of `data` is buffered until the rest arrives.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let chunk = match self.chunk {
            Some(c) => c,
            None => {
                let take = (HEADER_BYTES - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() < HEADER_BYTES {
                    return Ok(());
                }
                let c = parse_header(&self.buf)?;
                self.buf.clear();
                self.chunk = Some(c);
                c
            }
        };
        let sealed = chunk + TAG_BYTES;
        // A buffered chunk is completed first, and opened once more data
        // follows it: only then is it known not to be the last.
        if !self.buf.is_empty() {
            let take = (sealed - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if data.is_empty() {
                return Ok(());
            }
            let buffered = std::mem::take(&mut self.buf);
            let opened = self.open_from(&buffered, chunk, false, out);
            self.buf = buffered;
            self.buf.clear();
            opened?;
        }
        // Every chunk followed by more data is known not to be the last.
        let whole = data.len().saturating_sub(1) / sealed;
        if self.parallel && whole >= 2 {
            let (chunks, rest) = data.split_at(whole * sealed);
            self.open_split(chunks, chunk, out)?;
            data = rest;
        }
        while data.len() > sealed {
            let (one, rest) = data.split_at(sealed);
            self.open_from(one, chunk, false, out)?;
            data = rest;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Opens `chunks` (whole, none the last) onto `out`, the first half in
    /// this thread and the second in another.
    fn open_split(
        &mut self,
        chunks: &[u8],
        chunk: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let sealed = chunk + TAG_BYTES;
        let count = chunks.len() / sealed;
        let start = out.len();
        for one in chunks.chunks_exact(sealed) {
            out.extend_from_slice(&one[..chunk]);
        }
        let first = self.counter;
        let key = &self.key;
        let open = |index: usize, body: &mut [u8]| -> Result<(), u64> {
            let counter = first + index as u64;
            let tag = &chunks[index * sealed + chunk..(index + 1) * sealed];
            key.open_in_place(&nonce(counter, false), &header(chunk), body, tag)
                .map_err(|_| counter)
        };
        let half = count / 2;
        let (low, high) = out[start..].split_at_mut(half * chunk);
        let (low, high) = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                high.chunks_exact_mut(chunk)
                    .enumerate()
                    .try_for_each(|(i, body)| open(half + i, body))
            });
            let low = low
                .chunks_exact_mut(chunk)
                .enumerate()
                .try_for_each(|(i, body)| open(i, body));
            // A thread that cannot be joined counts as a failed chunk.
            (low, other.join().unwrap_or(Err(first + half as u64)))
        });
        if let Err(counter) = low.and(high) {
            out.truncate(start);
            return Err(CryptoError::Integrity(format!(
                "chunk {counter} of the object does not verify (altered or truncated)"
            )));
        }
        self.counter += count as u64;
        Ok(())
    }

    /// Opens the last chunk; an object without a proper ending fails here.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let Some(chunk) = self.chunk else {
            return Err(CryptoError::Integrity(
                "object is shorter than its header".into(),
            ));
        };
        let len = self.buf.len();
        if len < TAG_BYTES {
            return Err(CryptoError::Integrity("object is truncated".into()));
        }
        self.open_one(0, len, chunk, true, out)
    }

    fn open_one(
        &mut self,
        at: usize,
        len: usize,
        chunk: usize,
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let sealed = std::mem::take(&mut self.buf);
        let result = self.open_from(&sealed[at..at + len], chunk, last, out);
        self.buf = sealed;
        result
    }

    /// Opens one sealed chunk (body and tag) onto the end of `out`.
    fn open_from(
        &mut self,
        sealed: &[u8],
        chunk: usize,
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (body, tag) = sealed.split_at(sealed.len() - TAG_BYTES);
        let start = out.len();
        out.extend_from_slice(body);
        self.key
            .open_in_place(
                &nonce(self.counter, last),
                &header(chunk),
                &mut out[start..],
                tag,
            )
            .map_err(|_| {
                out.truncate(start);
                CryptoError::Integrity(format!(
                    "chunk {} of the object does not verify (altered or truncated)",
                    self.counter
                ))
            })?;
        self.counter += 1;
        Ok(())
    }
}

fn parse_header(h: &[u8]) -> Result<usize, CryptoError> {
    if &h[..4] != MAGIC {
        return Err(CryptoError::Integrity("not a Strongroom object".into()));
    }
    let chunk = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
        return Err(CryptoError::Integrity("implausible chunk size".into()));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::generate_key;

    fn seal(key: &[u8; 32], data: &[u8], piece: usize) -> Vec<u8> {
        let mut sealer = Sealer::new(DataKey::new(key));
        let mut out = Vec::new();
        for (i, part) in data.chunks(piece.max(1)).enumerate() {
            sealer.push(part);
            // Taking now and then must not change the result.
            if i % 3 == 1 {
                out.extend_from_slice(&sealer.take_sealed(0));
            }
        }
        out.extend_from_slice(&sealer.finish());
        out
    }

    /// Opens in `piece`-sized parts, on one thread and on two; both must
    /// agree.
    fn open(key: &[u8; 32], stored: &[u8], piece: usize) -> Result<Vec<u8>, CryptoError> {
        let run = |mut opener: Opener| {
            let mut out = Vec::new();
            for part in stored.chunks(piece.max(1)) {
                opener.push(part, &mut out)?;
            }
            opener.finish(&mut out)?;
            Ok::<_, CryptoError>(out)
        };
        let one = run(Opener::new(DataKey::new(key)));
        let two = run(Opener::parallel(DataKey::new(key)));
        match (&one, &two) {
            (Ok(a), Ok(b)) => assert!(a == b, "the two openers disagree"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("one opener failed, the other did not: {one:?} / {two:?}"),
        }
        one
    }

    #[test]
    fn any_size_round_trips_through_any_piece_size() {
        let key = generate_key();
        for size in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 7,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for piece in [1000, 65_536, CHUNK_BYTES + 5] {
                let stored = seal(&key, &data, piece);
                assert_eq!(stored.len() as u64, sealed_size(size as u64));
                for open_piece in [1000, 7777, CHUNK_BYTES + TAG_BYTES, 4 << 20] {
                    assert_eq!(
                        open(&key, &stored, open_piece).unwrap(),
                        data,
                        "size {size}, sealed in {piece}, opened in {open_piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn flipped_truncated_or_extended_objects_fail() {
        let key = generate_key();
        let data = vec![7u8; 2 * CHUNK_BYTES + 100];
        let stored = seal(&key, &data, 4096);
        let mut flipped = stored.clone();
        flipped[HEADER_BYTES + CHUNK_BYTES + 40] ^= 0x20;
        assert!(open(&key, &flipped, 9000).is_err());
        // Cut exactly after the second chunk: looks complete, but is not.
        let cut = &stored[..HEADER_BYTES + 2 * (CHUNK_BYTES + TAG_BYTES)];
        assert!(open(&key, cut, 9000).is_err());
        assert!(open(&key, &stored[..stored.len() - 1], 9000).is_err());
        let mut longer = stored.clone();
        longer.extend_from_slice(&[0u8; 20]);
        assert!(open(&key, &longer, 9000).is_err());
        assert!(open(&generate_key(), &stored, 9000).is_err());
        assert!(open(&key, &stored[..3], 9000).is_err());

        // Pieces of many whole chunks (opened on two threads): a flip in
        // either half fails, and names the first chunk that does not verify.
        let data = vec![9u8; 9 * CHUNK_BYTES];
        let stored = seal(&key, &data, 1 << 20);
        for bad in [1, 6] {
            let mut flipped = stored.clone();
            flipped[HEADER_BYTES + bad * (CHUNK_BYTES + TAG_BYTES) + 3] ^= 1;
            let err = open(&key, &flipped, 4 << 20).unwrap_err();
            assert!(err.to_string().contains(&format!("chunk {bad} ")), "{err}");
        }
    }
}
