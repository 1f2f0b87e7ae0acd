// One file of this length: one parser per pgoutput message, beside the message types it produces.
//! Low-level parsing of pgoutput (protocol version 1) messages.

use crate::lsn::Lsn;

use super::DecodeError;

/// One pgoutput message, borrowing its strings and tuple data from the
/// payload it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage<'a> {
    /// `B`: a transaction starts.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: the transaction commits.
    Commit {
        /// Flags (currently unused by PostgreSQL, 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End LSN of the transaction (what is acknowledged).
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// `O`: the transaction originated on another node.
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: Lsn,
        /// Origin name.
        name: &'a str,
    },
    /// `R`: description of a published table.
    Relation(RelationMessage<'a>),
    /// `Y`: description of a custom type used by a published table.
    Type {
        /// Type OID.
        id: u32,
        /// Schema of the type.
        namespace: &'a str,
        /// Type name.
        name: &'a str,
    },
    /// `I`: a row was inserted.
    Insert {
        /// Relation id (see [`PgOutputMessage::Relation`]).
        relation_id: u32,
        /// The new row.
        new: TupleData<'a>,
    },
    /// `U`: a row was updated.
    Update {
        /// Relation id.
        relation_id: u32,
        /// The old row (`O`, full) or its key (`K`), when PostgreSQL sent it.
        old: Option<OldTuple<'a>>,
        /// The new row.
        new: TupleData<'a>,
    },
    /// `D`: a row was deleted.
    Delete {
        /// Relation id.
        relation_id: u32,
        /// The old row (`O`) or its key (`K`).
        old: OldTuple<'a>,
    },
    /// `T`: tables were truncated.
    Truncate {
        /// Option bits: [`TRUNCATE_CASCADE`], [`TRUNCATE_RESTART_IDENTITY`].
        options: u8,
        /// The truncated relations.
        relation_ids: Vec<u32>,
    },
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Whether the message was emitted transactionally (flag bit 1).
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix.
        prefix: &'a str,
        /// Content.
        content: &'a [u8],
    },
}

/// `TRUNCATE … CASCADE` option bit.
pub const TRUNCATE_CASCADE: u8 = 1;
/// `TRUNCATE … RESTART IDENTITY` option bit.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// A `R` (Relation) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage<'a> {
    /// Relation id (the table's OID).
    pub id: u32,
    /// Schema name.
    pub namespace: &'a str,
    /// Table name.
    pub name: &'a str,
    /// Replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Published columns, in order.
    pub columns: Vec<RelationColumn<'a>>,
}

/// One column of a [`RelationMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Flags: bit 1 marks a column of the replica identity (key).
    pub flags: u8,
    /// Column name.
    pub name: &'a str,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// Which old tuple an update or delete carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: only the replica identity (key) columns are meaningful; the other
    /// columns are sent as NULL.
    Key(TupleData<'a>),
    /// `O`: the full old row (`REPLICA IDENTITY FULL`).
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple data.
    pub fn data(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Validated tuple data: a column count and the raw column bytes.
///
/// Parsing checks the whole tuple, so iterating it cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleData<'a> {
    ncols: u16,
    bytes: &'a [u8],
}

impl<'a> TupleData<'a> {
    /// Number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.ncols)
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.ncols == 0
    }

    /// The columns, in order.
    pub fn iter(&self) -> TupleIter<'a> {
        TupleIter {
            left: self.ncols,
            bytes: self.bytes,
        }
    }
}

impl<'a> IntoIterator for &TupleData<'a> {
    type Item = TupleColumn<'a>;
    type IntoIter = TupleIter<'a>;
    fn into_iter(self) -> TupleIter<'a> {
        self.iter()
    }
}

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleColumn<'a> {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value, not sent.
    UnchangedToast,
    /// `t`: the value in text form.
    Text(&'a [u8]),
    /// `b`: the value in binary form (only when binary mode is requested,
    /// which walflow never does).
    Binary(&'a [u8]),
}

/// Iterator over the columns of a [`TupleData`].
#[derive(Debug, Clone)]
pub struct TupleIter<'a> {
    left: u16,
    bytes: &'a [u8],
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = TupleColumn<'a>;

    fn next(&mut self) -> Option<TupleColumn<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (&kind, rest) = self.bytes.split_first()?;
        match kind {
            b'n' => {
                self.bytes = rest;
                Some(TupleColumn::Null)
            }
            b'u' => {
                self.bytes = rest;
                Some(TupleColumn::UnchangedToast)
            }
            _ => {
                // Validated at parse time: 4-byte length then the data.
                let (len, rest) = rest.split_first_chunk::<4>()?;
                let len = u32::from_be_bytes(*len) as usize;
                let data = rest.get(..len)?;
                self.bytes = &rest[len..];
                Some(if kind == b't' {
                    TupleColumn::Text(data)
                } else {
                    TupleColumn::Binary(data)
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for TupleIter<'_> {}

/// A bounds-checked reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            what,
        }
    }

    fn malformed(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Malformed {
            message: self.message,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn cstr(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated(what))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let ncols = self.u16("tuple column count")?;
        if ncols > i16::MAX as u16 {
            return Err(self.malformed(format!("negative tuple column count {}", ncols as i16)));
        }
        let start = self.pos;
        for _ in 0..ncols {
            match self.u8("tuple column kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.i32("tuple column length")?;
                    let len = usize::try_from(len).map_err(|_| {
                        self.malformed(format!("negative tuple column length {len}"))
                    })?;
                    self.take(len, "tuple column data")?;
                }
                other => {
                    return Err(self
                        .malformed(format!("unknown tuple column kind {:?}", char::from(other))));
                }
            }
        }
        Ok(TupleData {
            ncols,
            bytes: &self.buf[start..self.pos],
        })
    }

    fn expect_tuple_tag(&mut self, tag: u8) -> Result<TupleData<'a>, DecodeError> {
        let got = self.u8("tuple tag")?;
        if got != tag {
            return Err(self.malformed(format!(
                "expected tuple tag {:?}, found {:?}",
                char::from(tag),
                char::from(got)
            )));
        }
        self.tuple()
    }

    fn old_tuple(&mut self, tag: u8) -> Result<OldTuple<'a>, DecodeError> {
        match tag {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(self.malformed(format!(
                "expected old tuple tag 'K' or 'O', found {:?}",
                char::from(other)
            ))),
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.malformed(format!(
                "{} unexpected trailing bytes",
                self.buf.len() - self.pos
            )))
        }
    }
}

/// Parses one pgoutput (protocol version 1) message.
///
/// Never panics: truncated or malformed input gives a [`DecodeError`] naming
/// the message and the field at fault.
pub fn parse_message(data: &[u8]) -> Result<PgOutputMessage<'_>, DecodeError> {
    let (&tag, _) = data.split_first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    let mut r = Reader {
        buf: data,
        pos: 1,
        message,
    };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let ncols = r.u16("column count")?;
            if ncols > i16::MAX as u16 {
                return Err(r.malformed(format!("negative column count {}", ncols as i16)));
            }
            // Each column takes at least 10 bytes: do not trust the count for
            // the allocation.
            let mut columns = Vec::with_capacity(usize::from(ncols).min((data.len() - r.pos) / 10));
            for _ in 0..ncols {
                columns.push(RelationColumn {
                    flags: r.u8("column flags")?,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type OID")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            PgOutputMessage::Relation(RelationMessage {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutputMessage::Type {
            id: r.u32("type OID")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => PgOutputMessage::Insert {
            relation_id: r.u32("relation id")?,
            new: r.expect_tuple_tag(b'N')?,
        },
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let old = match r.u8("tuple tag")? {
                b'N' => None,
                tag @ (b'K' | b'O') => {
                    let old = r.old_tuple(tag)?;
                    Some(old)
                }
                other => {
                    return Err(r.malformed(format!(
                        "expected tuple tag 'K', 'O' or 'N', found {:?}",
                        char::from(other)
                    )));
                }
            };
            let new = if old.is_some() {
                r.expect_tuple_tag(b'N')?
            } else {
                r.tuple()?
            };
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let tag = r.u8("tuple tag")?;
            PgOutputMessage::Delete {
                relation_id,
                old: r.old_tuple(tag)?,
            }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("options")?;
            let n = usize::try_from(n).map_err(|_| r.truncated("relation ids"))?;
            if n > (data.len() - r.pos) / 4 {
                return Err(r.truncated("relation ids"));
            }
            let mut relation_ids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_ids.push(r.u32("relation id")?);
            }
            PgOutputMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.u32("content length")?;
            let content = r.take(len as usize, "content")?;
            PgOutputMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        _ => unreachable!("tag checked above"),
    };
    r.finish()?;
    Ok(msg)
}
