//! Streaming AEAD for files (ENC-2, FIL-1): the plaintext is cut into
//! fixed-size chunks, each sealed with AES-256-GCM under the file's own key
//! and a nonce made of the chunk's index and a "last chunk" flag (the STREAM
//! construction). Reordered, altered, dropped or appended chunks fail to
//! open, and so does an object cut at a chunk boundary, because its new last
//! chunk was not sealed as the last one.
//!
//! Object layout: `SRF1` · chunk size (u32, big-endian) · chunks, each the
//! sealed plaintext followed by its 16-byte tag.

use bytes::{Bytes, BytesMut};

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
    /// to a fresh buffer with room for `incoming` more plaintext bytes and
    /// their tags, so pushing them never reallocates (and copies) it.
    pub fn take_sealed(&mut self, incoming: usize) -> Vec<u8> {
        let filling = self.out.len() - self.open;
        let tags = (filling + incoming) / CHUNK_BYTES + 1;
        let mut fresh = Vec::with_capacity(filling + incoming + tags * TAG_BYTES);
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
/// Whole chunks open in place, in the very buffer a piece was read into, and
/// come back as slices of it: nothing is copied unless that buffer is shared
/// (then it is copied once, and never written to).
pub struct Opener {
    key: DataKey,
    counter: u64,
    /// The header, or a chunk cut by the end of a piece, until the rest
    /// arrives.
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

    /// Takes the next piece of stored bytes; returns the plaintext it
    /// completes, verified. A chunk is opened only once more data follows
    /// it: only then is it known not to be the last.
    pub fn push(&mut self, piece: Bytes) -> Result<Vec<Bytes>, CryptoError> {
        let mut opened = Vec::new();
        let mut data = BytesMut::from(piece);
        let chunk = match self.chunk {
            Some(c) => c,
            None => {
                let take = (HEADER_BYTES - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data.split_to(take));
                if self.buf.len() < HEADER_BYTES {
                    return Ok(opened);
                }
                let c = parse_header(&self.buf)?;
                self.buf.clear();
                self.chunk = Some(c);
                c
            }
        };
        let sealed = chunk + TAG_BYTES;
        if !self.buf.is_empty() {
            let take = (sealed - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            if data.is_empty() {
                return Ok(opened);
            }
            opened.push(self.open_buffered(chunk, false)?);
        }
        let whole = data.len().saturating_sub(1) / sealed;
        let mut chunks = data.split_to(whole * sealed);
        self.open_in_place(&mut chunks, chunk)?;
        let chunks = chunks.freeze();
        opened.extend((0..whole).map(|i| chunks.slice(i * sealed..i * sealed + chunk)));
        self.buf.extend_from_slice(&data);
        Ok(opened)
    }

    /// Opens the last chunk; an object without a proper ending fails here.
    pub fn finish(mut self) -> Result<Bytes, CryptoError> {
        let Some(chunk) = self.chunk else {
            return Err(CryptoError::Integrity(
                "object is shorter than its header".into(),
            ));
        };
        if self.buf.len() < TAG_BYTES {
            return Err(CryptoError::Integrity("object is truncated".into()));
        }
        self.open_buffered(chunk, true)
    }

    /// Opens whole chunks (none the last) in place: with `parallel`, the
    /// first half on this thread and the second on another.
    fn open_in_place(&mut self, chunks: &mut [u8], chunk: usize) -> Result<(), CryptoError> {
        let sealed = chunk + TAG_BYTES;
        let count = chunks.len() / sealed;
        let key = &self.key;
        let open_all = |part: &mut [u8], first: u64| -> Result<(), u64> {
            part.chunks_exact_mut(sealed)
                .zip(first..)
                .try_for_each(|(one, counter)| {
                    let (body, tag) = one.split_at_mut(chunk);
                    key.open_in_place(&nonce(counter, false), &header(chunk), body, tag)
                        .map_err(|_| counter)
                })
        };
        let first = self.counter;
        let opened = if self.parallel && count >= 2 {
            let half = count / 2;
            let (low, high) = chunks.split_at_mut(half * sealed);
            let second = first + half as u64;
            std::thread::scope(|scope| {
                let other = scope.spawn(|| open_all(high, second));
                let low = open_all(low, first);
                // A thread that cannot be joined counts as a failed chunk.
                low.and(other.join().unwrap_or(Err(second)))
            })
        } else {
            open_all(chunks, first)
        };
        opened.map_err(refused)?;
        self.counter += count as u64;
        Ok(())
    }

    /// Opens the chunk (body and tag) held in `buf`, and empties `buf`.
    fn open_buffered(&mut self, chunk: usize, last: bool) -> Result<Bytes, CryptoError> {
        let mut one = std::mem::take(&mut self.buf);
        let len = one.len() - TAG_BYTES;
        let (body, tag) = one.split_at_mut(len);
        self.key
            .open_in_place(&nonce(self.counter, last), &header(chunk), body, tag)
            .map_err(|_| refused(self.counter))?;
        self.counter += 1;
        one.truncate(len);
        Ok(Bytes::from(one))
    }
}

fn refused(counter: u64) -> CryptoError {
    CryptoError::Integrity(format!(
        "chunk {counter} of the object does not verify (altered or truncated)"
    ))
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

    /// Opens in `piece`-sized parts two ways that must agree: on one thread
    /// from pieces of their own (opened in place), and on two threads from
    /// slices of one shared buffer (copied first, and left untouched).
    fn open(key: &[u8; 32], stored: &[u8], piece: usize) -> Result<Vec<u8>, CryptoError> {
        let run = |mut opener: Opener, pieces: Vec<Bytes>| {
            let mut out = Vec::new();
            for part in pieces {
                opener
                    .push(part)?
                    .iter()
                    .for_each(|p| out.extend_from_slice(p));
            }
            out.extend_from_slice(&opener.finish()?);
            Ok::<_, CryptoError>(out)
        };
        let owned = stored
            .chunks(piece.max(1))
            .map(Bytes::copy_from_slice)
            .collect();
        let shared = Bytes::copy_from_slice(stored);
        let slices = (0..stored.len())
            .step_by(piece.max(1))
            .map(|at| shared.slice(at..(at + piece.max(1)).min(stored.len())))
            .collect();
        let one = run(Opener::new(DataKey::new(key)), owned);
        let two = run(Opener::parallel(DataKey::new(key)), slices);
        assert!(shared == stored, "a shared buffer was written to");
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
