//! A dry run over an Avro body before apache-avro decodes it, checking every length prefix and
//! block count against the bytes that are actually left.
//!
//! apache-avro trusts them: a string length makes it zero a buffer of that size before reading,
//! and an array block count makes it reserve that many values (about 50 bytes each) before
//! reading the first. Its `max_allocation_bytes` cap applies to both as a number, so a 1 MiB cap
//! still let an 81-byte message reserve 53 MiB for a million purposes (measured: corpus file
//! `undecodable--purposes-block-count-one-million.bin`). Here nothing is
//! allocated: a length must fit in the rest of the body, and a block count must be at most the
//! bytes left (every item of our schemas takes at least one byte) and at most
//! [`MAX_BLOCK_ITEMS`]. Once this passes, apache-avro allocates a small multiple of the body.
//!
//! The walk follows the writer schema exactly as apache-avro reads it (strings and uuids as
//! length-prefixed bytes, blocks with an optional byte size), so the bytes it accepts are the
//! bytes apache-avro consumes; trailing bytes are reported here already.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema};

use crate::DecodeError;

/// Items per array or map: eight times what an event may carry ([`crate::MAX_PURPOSES`]
/// purposes). Each item costs apache-avro about 112 bytes (a 56-byte value, and again after
/// resolution) for as little as one byte of message, so this is what keeps an array of empty
/// strings from costing 110 times its size: 256 of them peak at about 31 KiB.
pub(crate) const MAX_BLOCK_ITEMS: usize = 256;
/// Nesting of records, unions, arrays and maps. Ours nest three deep; a recursive registry
/// schema fed a long chain would otherwise recurse until the stack overflows, here and in
/// apache-avro.
pub(crate) const MAX_DEPTH: usize = 32;

pub(crate) fn check(schema: &Schema, body: &[u8]) -> Result<(), DecodeError> {
    let mut walk = Walk {
        rest: body,
        names: None,
        root: schema,
    };
    walk.value(schema, 0)?;
    if walk.rest.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(walk.rest.len()))
    }
}

struct Walk<'s, 'b> {
    rest: &'b [u8],
    /// Named types, resolved only when the schema uses a reference (ours never do).
    names: Option<HashMap<Name, &'s Schema>>,
    root: &'s Schema,
}

impl<'s> Walk<'s, '_> {
    fn value(&mut self, schema: &'s Schema, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(MAX_DEPTH));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.skip(1),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.varint().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Duration => self.skip(12),
            Schema::Fixed(fixed) => self.skip(fixed.size),
            Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => {
                let len = self.varint()?;
                let len = self.fits("length", len)?;
                self.skip(len)
            }
            Schema::Decimal(decimal) => self.value(&decimal.inner, depth + 1),
            Schema::Union(union) => {
                let index = self.varint()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| union.variants().get(i))
                    .ok_or_else(|| {
                        DecodeError::Avro(format!(
                            "union branch {index} of {}",
                            union.variants().len()
                        ))
                    })?;
                self.value(variant, depth + 1)
            }
            Schema::Record(record) => {
                for field in &record.fields {
                    self.value(&field.schema, depth + 1)?;
                }
                Ok(())
            }
            Schema::Array(array) => self.blocks(|w| w.value(&array.items, depth + 1)),
            Schema::Map(map) => self.blocks(|w| {
                w.value(&Schema::String, depth + 1)?;
                w.value(&map.types, depth + 1)
            }),
            Schema::Ref { name } => {
                if self.names.is_none() {
                    let resolved = ResolvedSchema::try_from(self.root)
                        .map_err(|_| DecodeError::Avro("unresolvable schema reference".into()))?;
                    self.names = Some(resolved.get_names().clone());
                }
                let target = self
                    .names
                    .as_ref()
                    .and_then(|names| names.get(name).copied())
                    .ok_or_else(|| DecodeError::Avro("unresolvable schema reference".into()))?;
                self.value(target, depth + 1)
            }
        }
    }

    /// Array and map blocks: a count, negative when a byte size follows, until a count of 0.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut total = 0usize;
        loop {
            let count = self.varint()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.varint()?;
            }
            let count = self.fits("block count", count.checked_abs().unwrap_or(i64::MAX))?;
            total += count;
            if total > MAX_BLOCK_ITEMS {
                return Err(DecodeError::ImplausibleLength {
                    what: "item count",
                    declared: i64::try_from(total).unwrap_or(i64::MAX),
                    remaining: MAX_BLOCK_ITEMS,
                });
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    /// `declared` as a length, if the rest of the body can hold it.
    fn fits(&self, what: &'static str, declared: i64) -> Result<usize, DecodeError> {
        match usize::try_from(declared) {
            Ok(len) if len <= self.rest.len() => Ok(len),
            _ => Err(DecodeError::ImplausibleLength {
                what,
                declared,
                remaining: self.rest.len(),
            }),
        }
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        self.rest = &self.rest[n..];
        Ok(())
    }

    /// A zig-zag varint of at most 10 bytes, as Avro writes `int` and `long`.
    fn varint(&mut self) -> Result<i64, DecodeError> {
        let mut raw = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
            self.rest = rest;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(DecodeError::Avro("integer longer than 10 bytes".into()))
    }
}
