//! Requests: parsing a header into a checked operation (pure).

use crate::handshake::Negotiated;
use crate::wire::*;

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disc,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

pub(super) type Reject = (NbdErrno, &'static str);

/// Check a request against the negotiated state and export size (pure).
pub(crate) fn validate(h: &RequestHeader, n: &Negotiated, max_request: u32) -> Result<Op, Reject> {
    if h.command == CMD_DISC {
        // No reply is possible, so flags and fields do not matter.
        return Ok(Op::Disc);
    }
    let mut allowed = CMD_FLAG_FUA;
    match h.command {
        CMD_READ if n.structured => allowed |= CMD_FLAG_DF,
        CMD_WRITE_ZEROES => allowed |= CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => allowed |= CMD_FLAG_REQ_ONE,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => {}
        _ => return Err((NbdErrno::Inval, "unknown command")),
    }
    if h.flags & !allowed != 0 {
        return Err((NbdErrno::Inval, "invalid command flags"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(h.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && n.read_only {
        return Err((NbdErrno::Perm, "export is read-only"));
    }
    let in_bounds = h
        .offset
        .checked_add(u64::from(h.len))
        .is_some_and(|end| end <= n.size);
    let (offset, len) = (h.offset, h.len);
    match h.command {
        CMD_FLUSH => {
            return if offset != 0 || len != 0 {
                Err((NbdErrno::Inval, "flush offset and length must be zero"))
            } else {
                Ok(Op::Flush)
            };
        }
        CMD_READ if len > max_request => {
            // Structured replies allow EOVERFLOW for oversized reads.
            let e = if n.structured {
                NbdErrno::Overflow
            } else {
                NbdErrno::Inval
            };
            return Err((e, "read larger than maximum payload"));
        }
        CMD_WRITE if len > max_request => {
            return Err((NbdErrno::Inval, "write larger than maximum payload"))
        }
        CMD_BLOCK_STATUS if n.base_allocation.is_none() => {
            return Err((NbdErrno::Inval, "no metadata context negotiated"))
        }
        CMD_BLOCK_STATUS if len == 0 => return Err((NbdErrno::Inval, "zero-length block status")),
        _ => {}
    }
    if !in_bounds {
        let e = if matches!(h.command, CMD_WRITE | CMD_WRITE_ZEROES) {
            NbdErrno::NoSpc
        } else {
            NbdErrno::Inval
        };
        return Err((e, "request beyond end of export"));
    }
    Ok(match h.command {
        CMD_READ => Op::Read { offset, len },
        CMD_WRITE => Op::Write { offset, len, fua },
        CMD_TRIM => Op::Trim { offset, len, fua },
        CMD_CACHE => Op::Cache,
        CMD_WRITE_ZEROES => Op::WriteZeroes {
            offset,
            len,
            may_trim: h.flags & CMD_FLAG_NO_HOLE == 0,
            fua,
        },
        CMD_BLOCK_STATUS => Op::BlockStatus {
            offset,
            len,
            req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
        },
        _ => unreachable!("filtered above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(structured: bool, ro: bool) -> Negotiated {
        Negotiated {
            size: 1 << 20,
            transmission_flags: 0,
            read_only: ro,
            structured,
            base_allocation: structured.then_some(1),
        }
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn validation_errors() {
        let n = neg(false, false);
        let max = 1 << 16;
        let v = |h| validate(&h, &n, max).map_err(|e| e.0);
        assert_eq!(v(req(99, 0, 0, 0)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, CMD_FLAG_DF, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 1 << 9, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, (1 << 20) - 1, 2)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, u64::MAX, 2)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, 0, max + 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_WRITE, 0, 1 << 20, 1)), Err(NbdErrno::NoSpc));
        assert_eq!(
            v(req(CMD_WRITE_ZEROES, 0, 1 << 20, 1)),
            Err(NbdErrno::NoSpc)
        );
        assert_eq!(v(req(CMD_TRIM, 0, 1 << 20, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_FLUSH, 0, 1, 0)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_BLOCK_STATUS, 0, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(
            v(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 1)),
            Err(NbdErrno::Inval)
        );
        assert!(v(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 1)).is_ok());
        let s = neg(true, false);
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, max + 1), &s, max).map_err(|e| e.0),
            Err(NbdErrno::Overflow)
        );
        assert!(validate(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &s, max).is_ok());
        let ro = neg(false, true);
        assert_eq!(
            validate(&req(CMD_WRITE, 0, 0, 1), &ro, max).map_err(|e| e.0),
            Err(NbdErrno::Perm)
        );
        assert_eq!(
            validate(&req(CMD_TRIM, 0, 0, 1), &ro, max).map_err(|e| e.0),
            Err(NbdErrno::Perm)
        );
    }
}
