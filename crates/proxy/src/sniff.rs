//! Watches the bytes of each HTTP/1 request head for the one smuggling
//! shape hyper resolves silently: `Content-Length` together with
//! `Transfer-Encoding`. hyper drops the Content-Length (Transfer-Encoding
//! wins, as RFC 9112 §6.3 allows) before the request exists, so the proxy
//! could not otherwise refuse it; this notes it for the request path.
//! It also holds bytes hyper read but did not use when a connection parks
//! or upgrades, and serves them first to whoever reads next.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared between the sniffer (writer) and the request path (reader).
#[derive(Debug, Default)]
pub(crate) struct HeadFlags {
    /// The head just read had both Content-Length and Transfer-Encoding.
    pub ambiguous: AtomicBool,
    /// Requests the request path has finished with; the sniffer scans the
    /// next head only once this catches up with the heads it saw.
    pub done: AtomicU64,
}

const CL: &[u8] = b"content-length";
const TE: &[u8] = b"transfer-encoding";

pub(crate) struct Sniffer<I> {
    inner: I,
    /// Read from `inner` (and scanned) already, handed back unused.
    unread: Bytes,
    flags: Arc<HeadFlags>,
    scanning: bool,
    /// Off for good: the connection is HTTP/2 (its preface came first).
    off: bool,
    first: bool,
    heads: u64,
    at_line_start: bool,
    /// A CR at the start of a line: the empty line ending the head if LF follows.
    blank_cr: bool,
    /// Lower-cased start of the current line, up to its colon.
    name: [u8; 18],
    name_len: usize,
    in_name: bool,
    cl: bool,
    te: bool,
}

impl<I> Sniffer<I> {
    pub fn new(inner: I, flags: Arc<HeadFlags>) -> Self {
        Sniffer {
            inner,
            unread: Bytes::new(),
            flags,
            scanning: true,
            off: false,
            first: true,
            heads: 0,
            at_line_start: true,
            blank_cr: false,
            name: [0; 18],
            name_len: 0,
            in_name: true,
            cl: false,
            te: false,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Bytes to serve again before reading more (they were scanned when
    /// first read). Copied, because they are a view into hyper's read
    /// buffer and would keep all of it alive; they are rarely more than a
    /// few bytes.
    pub fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        if !bytes.is_empty() {
            self.unread = Bytes::copy_from_slice(&bytes);
        }
    }

    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    fn scan(&mut self, bytes: &[u8]) {
        if self.first && !bytes.is_empty() {
            self.first = false;
            if bytes.starts_with(b"PRI ") {
                self.off = true;
            }
        }
        if self.off {
            return;
        }
        if !self.scanning && self.flags.done.load(Relaxed) >= self.heads {
            // The last request is finished: what comes next is a head.
            self.scanning = true;
            self.cl = false;
            self.te = false;
            self.at_line_start = true;
            self.in_name = true;
            self.name_len = 0;
        }
        if !self.scanning {
            return;
        }
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i += 1;
            if !self.in_name && !self.at_line_start && !self.blank_cr && b != b'\n' {
                // In a value (or a long request line): nothing to see
                // until the line ends.
                match bytes[i..].iter().position(|&c| c == b'\n') {
                    Some(j) => i += j,
                    None => return,
                }
                continue;
            }
            if self.at_line_start {
                self.at_line_start = false;
                if b == b'\r' {
                    self.blank_cr = true;
                    continue;
                }
            }
            // Only a name starting with c or t can be one of the two:
            // skip every other line whole.
            if self.in_name && self.name_len == 0 && b != b'\n' && !matches!(b | 0x20, b'c' | b't')
            {
                self.in_name = false;
                continue;
            }
            if self.blank_cr {
                self.blank_cr = false;
                if b == b'\n' {
                    // End of the head.
                    self.heads += 1;
                    self.scanning = false;
                    if self.cl && self.te {
                        self.flags.ambiguous.store(true, Relaxed);
                    }
                    return;
                }
            }
            match b {
                b'\n' => {
                    self.at_line_start = true;
                    self.in_name = true;
                    self.name_len = 0;
                }
                b':' if self.in_name => {
                    self.in_name = false;
                    let name = &self.name[..self.name_len];
                    self.cl |= name == CL;
                    self.te |= name == TE;
                }
                _ if self.in_name => {
                    if self.name_len < self.name.len() {
                        self.name[self.name_len] = b.to_ascii_lowercase();
                        self.name_len += 1;
                    } else {
                        self.in_name = false;
                    }
                }
                _ => {}
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Sniffer<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.scan(&buf.filled()[before..]);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Sniffer<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ambiguous(chunks: &[&[u8]]) -> bool {
        let flags = Arc::new(HeadFlags::default());
        let mut s = Sniffer::new((), flags.clone());
        for c in chunks {
            s.scan(c);
        }
        flags.ambiguous.load(Relaxed)
    }

    #[test]
    fn sees_both_lengths_however_the_head_is_split() {
        let both: &[u8] = b"POST /a/rather/long/path/indeed HTTP/1.1\r\nHost: x.test\r\nContent-Length: 6\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\ntransfer-encoding: chunked\r\n\r\n";
        let one: &[u8] = b"POST / HTTP/1.1\r\nHost: x.test\r\nX-Content-Length: 6\r\nX-A: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 0..=both.len() {
            assert!(
                ambiguous(&[&both[..split], &both[split..]]),
                "split at {split}"
            );
        }
        for split in 0..=one.len() {
            assert!(
                !ambiguous(&[&one[..split], &one[split..]]),
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = both.chunks(1).collect();
        assert!(ambiguous(&bytes));
        let bytes: Vec<&[u8]> = one.chunks(1).collect();
        assert!(!ambiguous(&bytes));
    }
}
