//! The columnar records the dataflow moves, for any pipeline a graph declares.
//!
//! - A **raw batch** is a `RecordBatch` in the raw table's schema (see [`crate::pipeline`]): what a
//!   source reads, what the raw table stores, what the rules judge.
//! - [`Candidates`] are the rows that passed the rules, bound for the upsert: the working columns
//!   (curated columns, then the lineage), what the rows said as ingested where that differs (for
//!   the rejected table, should the upsert find one late), and per row the key and the [`Slot`]
//!   the upsert keeps.
//! - A **rejected batch** is a `RecordBatch` in the rejected table's schema; [`rejected_batch`]
//!   builds one from any rows that carry the coordinates.
//!
//! Keys ([`KeyMaker`]): a key declared `uuid` is its 128-bit value (so every spelling of one UUID
//! is one key); any other key is the 128-bit xxh3 hash of its columns' values as ingested, each
//! prefixed with its length, so `("ab", "c")` and `("a", "bc")` differ. The key's own text is never
//! rewritten, except a UUID's, which curated holds in canonical form.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int64Array, ListArray, RecordBatch, RecordBatchOptions,
    StringArray, StructArray, new_null_array,
};
use arrow::datatypes::{DataType, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::model::{IngestPosition, Origin, day_of_millis};
use crate::pipeline::{KeyKind, Pipeline};

/// What the upsert keeps per live key: enough to decide the winner and to tell a changed row from
/// the same row obtained again, never the row itself (it lives in the epoch's batch, then in its
/// data file).
///
/// The derived `Ord` is ingestion order (position first), the order the upsert folds a key's
/// candidates in; [`Slot::beats`] is the "latest wins" order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub position: IngestPosition,
    pub origin: Origin,
    /// The order column's value (an integer, date or timestamp, as its 64-bit number).
    pub order: i64,
    /// The curated partition the row lives in (a day number, or an identity partition's integer).
    pub day: i32,
    /// A hash of the row's values ([`fingerprinted_columns`]): a re-processed record equal to its
    /// reloaded row is no change for the table. Computed for reloaded rows (seeds) as they load;
    /// a record's candidate leaves it 0 until the upsert meets it against a seed at the same
    /// position, the one place it is compared, and hashes its row then (see [`crate::upsert`]).
    pub fingerprint: u64,
}

/// The curated columns a [`Slot::fingerprint`] hashes, in curated order: all but a UUID key's,
/// which the key itself stands for (and which candidate rows leave out while they wait, see
/// [`PrintedKey`]). So the first this many columns of a candidate's rows are exactly these. Never
/// empty: the order column is curated, and it is no UUID (the pipeline checks both).
pub fn fingerprinted_columns(pipeline: &Pipeline) -> Vec<&str> {
    let printed = (pipeline.key_kind == KeyKind::Uuid).then(|| pipeline.key[0].as_str());
    pipeline.curated.iter().map(|(name, _)| name.as_str()).filter(|name| Some(*name) != printed).collect()
}

impl Slot {
    /// Total "latest wins" order: greatest order value, ties to the later ingested record, and a
    /// re-processed record over its reloaded copy.
    pub fn winner_order(&self) -> (i64, IngestPosition, Origin) {
        (self.order, self.position, self.origin)
    }

    pub fn beats(&self, other: &Slot) -> bool {
        self.winner_order() > other.winner_order()
    }

    /// The same table row: same values from the same record.
    pub fn same_row(&self, other: &Slot) -> bool {
        self.position == other.position && self.fingerprint == other.fingerprint && self.day == other.day
    }
}

/// Rows that passed the rules, bound for the upsert.
#[derive(Debug, Clone)]
pub struct Candidates {
    /// The curated columns, then the lineage (`ingestion_ts_ms`, `source_partition`, `source_offset`).
    pub rows: RecordBatch,
    /// What the rows said as ingested that `rows` does not keep: only the columns where some row
    /// differs, null where a row does not (usually no column at all). Late updates are written to
    /// the rejected table as ingested from `rows` with these laid over.
    pub ingested: RecordBatch,
    pub keys: Vec<u128>,
    pub slots: Vec<Slot>,
    /// The row of `rows` and `ingested` each candidate is, when they are not all of them in order:
    /// a worker's share of a batch refers to the batch, which the workers of one process share,
    /// instead of copying its rows ([`Candidates::split`]).
    selection: Option<Vec<u32>>,
    /// `rows` and `ingested` (their selected rows) as sent to another process.
    encoded: [EncodedOnce; 2],
}

impl Candidates {
    pub fn new(rows: RecordBatch, ingested: RecordBatch, keys: Vec<u128>, slots: Vec<Slot>) -> Candidates {
        Candidates { rows, ingested, keys, slots, selection: None, encoded: Default::default() }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The candidates split into `parts` shares, each candidate to the share `part_of` its key
    /// names, in their order, in one pass. The shares refer to this one's batches: only keys,
    /// slots and row numbers are copied. The rows themselves are copied only if a share is sent to
    /// another process, and then only its own.
    pub fn split(&self, parts: usize, part_of: impl Fn(u128) -> usize) -> Result<Vec<Candidates>> {
        let mut shares = Shares::new(parts, self.len());
        for (index, (&key, slot)) in self.keys.iter().zip(&self.slots).enumerate() {
            shares.push(part_of(key), key, *slot, self.row_of(index))?;
        }
        Ok(shares.finish(&self.rows, &self.ingested))
    }

    /// The row of `rows` and `ingested` that candidate `index` (of `keys` and `slots`) is.
    pub fn row_of(&self, index: usize) -> u32 {
        match &self.selection {
            Some(selection) => selection[index],
            None => index as u32,
        }
    }
}

/// Candidates dealt into shares as they are made: per share the keys, the slots and the rows of
/// the batch they are. The rules stage deals each candidate to the worker owning its key as it
/// makes its slot, so an epoch's keys and slots are written once, not once whole and again split.
pub struct Shares {
    parts: Vec<(Vec<u128>, Vec<Slot>, Vec<u32>)>,
}

impl Shares {
    /// `parts` empty shares, sized for `count` candidates spread evenly (plus some slack).
    pub fn new(parts: usize, count: usize) -> Shares {
        let expected = count / parts.max(1) + count / 16;
        Shares { parts: (0..parts).map(|_| (Vec::with_capacity(expected), Vec::with_capacity(expected), Vec::with_capacity(expected))).collect() }
    }

    /// Candidate `key` with `slot`, row `row` of the batch, into share `part`.
    pub fn push(&mut self, part: usize, key: u128, slot: Slot, row: u32) -> Result<()> {
        let parts = self.parts.len();
        let Some((keys, slots, rows)) = self.parts.get_mut(part) else {
            return Err(Error::Internal(format!("share {part} of {parts}")));
        };
        keys.push(key);
        slots.push(slot);
        rows.push(row);
        Ok(())
    }

    /// The shares, in order (empty ones too), each referring to `rows` and `ingested`: a share
    /// that is every row in order is the batch itself.
    pub fn finish(self, rows: &RecordBatch, ingested: &RecordBatch) -> Vec<Candidates> {
        self.parts
            .into_iter()
            .map(|(keys, slots, selected)| {
                let whole = selected.len() == rows.num_rows() && selected.iter().enumerate().all(|(i, &row)| row as usize == i);
                Candidates {
                    rows: rows.clone(),
                    ingested: ingested.clone(),
                    keys,
                    slots,
                    selection: (!whole).then_some(selected),
                    encoded: Default::default(),
                }
            })
            .collect()
    }
}

/// The rows of `batch` at `rows`, in that order (a batch of no columns keeps only a row count).
///
/// Most callers keep most of a batch's rows in their order (all but the rejected ones, or one
/// worker's share): ascending rows are selected with arrow's filter, which copies runs of kept
/// rows whole where a gather copies value by value, and all rows in order are the batch itself.
pub fn take_rows(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    if batch.num_columns() == 0 {
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        return RecordBatch::try_new_with_options(batch.schema(), Vec::new(), &options).context(|| "selecting rows".into());
    }
    if let Some(&past) = rows.iter().find(|&&row| row as usize >= batch.num_rows()) {
        // arrow's take would panic.
        return Err(Error::Internal(format!("row {past} of a batch of {} rows", batch.num_rows())));
    }
    if rows.windows(2).all(|pair| pair[0] < pair[1]) {
        if rows.len() == batch.num_rows() {
            return Ok(batch.clone());
        }
        let mut keep = arrow::array::builder::BooleanBufferBuilder::new(batch.num_rows());
        keep.append_n(batch.num_rows(), false);
        for &row in rows {
            keep.set_bit(row as usize, true);
        }
        let keep = arrow::array::BooleanArray::new(keep.finish(), None);
        return arrow::compute::filter_record_batch(batch, &keep).context(|| "selecting rows".into());
    }
    arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(rows.to_vec())).context(|| "selecting rows".into())
}

/// The rows at `indices` ((batch, row) pairs) of `batches`, which share one schema, in that
/// order: arrow's `interleave_record_batch`, except for boolean columns. arrow gathers those
/// through its generic per-value path (`MutableArrayData`), which cost as much as all six
/// number columns of a ratings row together; here they are gathered bit by bit.
pub fn interleave_rows(batches: &[&RecordBatch], indices: &[(usize, usize)]) -> Result<RecordBatch> {
    use arrow::array::BooleanArray;
    use arrow::buffer::{BooleanBuffer, NullBuffer};
    let Some(first) = batches.first() else {
        return Err(Error::Internal("interleaving rows of no batches".into()));
    };
    let schema = first.schema();
    if let Some(other) = batches.iter().find(|batch| batch.num_columns() != schema.fields().len()) {
        // arrow's interleave would panic.
        return Err(Error::Internal(format!("interleaving rows of {} and {} columns", schema.fields().len(), other.num_columns())));
    }
    if let Some(&(batch, row)) = indices.iter().find(|&&(batch, row)| batches.get(batch).is_none_or(|b| row >= b.num_rows())) {
        // arrow's interleave would panic.
        return Err(Error::Internal(format!("row {row} of batch {batch} of {} batches", batches.len())));
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (index, field) in schema.fields().iter().enumerate() {
        let arrays: Vec<&dyn Array> = batches.iter().map(|batch| batch.column(index).as_ref()).collect();
        if field.data_type() != &DataType::Boolean || arrays.iter().any(|array| array.data_type() != &DataType::Boolean) {
            columns.push(arrow::compute::interleave(&arrays, indices).context(|| format!("gathering column {}", field.name()))?);
            continue;
        }
        let booleans: Vec<&BooleanArray> = arrays.iter().map(|array| array.as_boolean()).collect();
        let values = BooleanBuffer::collect_bool(indices.len(), |i| {
            let (batch, row) = indices[i];
            booleans[batch].values().value(row)
        });
        let nulls = booleans.iter().any(|array| array.null_count() > 0).then(|| {
            NullBuffer::new(BooleanBuffer::collect_bool(indices.len(), |i| {
                let (batch, row) = indices[i];
                booleans[batch].is_valid(row)
            }))
        });
        columns.push(Arc::new(BooleanArray::new(values, nulls)) as ArrayRef);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(indices.len()));
    RecordBatch::try_new_with_options(schema, columns, &options).context(|| "gathering rows".into())
}

/// `batch` ordered by the columns `by` (ascending, nulls first), each of which it must hold.
/// Integer and date columns (coordinates, dates: what the engine orders raw rows by) are compared
/// as plain numbers; arrow's `lexsort` compares through a dynamic comparator per pair, which cost
/// a tenth of a stream's CPU time ordering its raw rows.
pub fn sorted_by(batch: &RecordBatch, by: &[&str]) -> Result<RecordBatch> {
    let columns = by
        .iter()
        .map(|name| batch.column_by_name(name).cloned().ok_or_else(|| Error::Internal(format!("rows to order without {name}"))))
        .collect::<Result<Vec<_>>>()?;
    let numbers: Option<Vec<Vec<Option<i64>>>> = columns.iter().map(|column| order_values(column).ok()).collect();
    let order = match numbers {
        Some(numbers) => {
            let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                numbers.iter().map(|values| values[a as usize].cmp(&values[b as usize])).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
            });
            arrow::array::UInt32Array::from(order)
        }
        None => {
            let columns: Vec<arrow::compute::SortColumn> = columns.into_iter().map(|values| arrow::compute::SortColumn { values, options: None }).collect();
            arrow::compute::lexsort_to_indices(&columns, None).context(|| format!("ordering rows by {}", by.join(", ")))?
        }
    };
    arrow::compute::take_record_batch(batch, &order).context(|| format!("ordering rows by {}", by.join(", ")))
}

/// `batch` (ordered by the date column `column`) cut into one slice per date.
pub fn day_runs(batch: &RecordBatch, column: &str) -> Result<Vec<(i32, RecordBatch)>> {
    let days = batch
        .column_by_name(column)
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Date32Type>())
        .ok_or_else(|| Error::Internal(format!("rows without the date column {column}")))?
        .values();
    let mut runs = Vec::new();
    let mut start = 0;
    while start < days.len() {
        let end = start + days[start..].iter().take_while(|d| **d == days[start]).count();
        runs.push((days[start], batch.slice(start, end - start)));
        start = end;
    }
    Ok(runs)
}

/// Record batches cross workers inside one process as they are; between processes they travel as
/// Arrow IPC streams (schema, then the batch), which keeps every type and value exactly. The
/// stream goes as one byte string (one copy), and is read back without copying its buffers again.
pub mod ipc {
    use arrow::array::RecordBatch;
    use arrow::buffer::Buffer;
    use arrow::error::ArrowError;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(batch: &RecordBatch, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&encode(batch).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RecordBatch, D::Error> {
        decode(serde_bytes::ByteBuf::deserialize(deserializer)?.into_vec()).map_err(serde::de::Error::custom)
    }

    /// The IPC stream of `batch`, in a buffer sized for it up front (growing it would copy it).
    pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        let body: usize = batch.columns().iter().map(|column| column.to_data().get_slice_memory_size().unwrap_or(0)).sum();
        // Room for the schema and batch headers and the padding of each buffer to 64 bytes.
        let mut bytes = Vec::with_capacity(body + 1024 + 128 * batch.num_columns());
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
        drop(writer);
        Ok(bytes)
    }

    /// The batch of an IPC stream: its arrays point into `bytes` (arrow copies only a buffer that
    /// is not aligned for its type).
    pub fn decode(bytes: Vec<u8>) -> Result<RecordBatch, ArrowError> {
        let mut buffer = Buffer::from_vec(bytes);
        let mut decoder = arrow::ipc::reader::StreamDecoder::new();
        let mut batch = None;
        while !buffer.is_empty() && batch.is_none() {
            batch = decoder.decode(&mut buffer)?;
        }
        batch.ok_or_else(|| ArrowError::IpcError("an IPC stream without a batch".into()))
    }
}

/// The IPC encoding of a batch (see [`ipc`]), made the first time the value holding it is
/// serialized. Timely sizes a message for another process by serializing it, then serializes it
/// again into its send buffer; this makes that one encoding, not two. A value is never changed
/// once it is sent, so the encoding cannot go stale.
#[derive(Debug, Clone, Default)]
pub struct EncodedOnce(std::sync::OnceLock<Vec<u8>>);

impl EncodedOnce {
    /// Serializes the IPC stream of `batch()`, made on the first call only.
    fn serialize<S: serde::Serializer>(&self, batch: impl FnOnce() -> Result<RecordBatch>, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes = match self.0.get() {
            Some(bytes) => bytes,
            None => {
                let batch = batch().map_err(serde::ser::Error::custom)?;
                let bytes = ipc::encode(&batch).map_err(serde::ser::Error::custom)?;
                self.0.get_or_init(|| bytes)
            }
        };
        serializer.serialize_bytes(bytes)
    }
}

/// An optional schema crossing processes: an Arrow IPC stream of an empty batch (see [`ipc`]).
pub mod ipc_schema {
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use arrow::datatypes::Schema;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(schema: &Option<Arc<Schema>>, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire(#[serde(with = "super::ipc")] RecordBatch);
        schema.as_ref().map(|schema| Wire(RecordBatch::new_empty(schema.clone()))).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Arc<Schema>>, D::Error> {
        #[derive(Deserialize)]
        struct Wire(#[serde(with = "super::ipc")] RecordBatch);
        Ok(Option::<Wire>::deserialize(deserializer)?.map(|wire| wire.0.schema()))
    }
}

impl Serialize for Candidates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        /// One of the candidates' batches, cut to their own rows when first encoded: a share
        /// travels as its selected rows only.
        struct Encoded<'a>(&'a EncodedOnce, &'a RecordBatch, Option<&'a [u32]>);
        impl Serialize for Encoded<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                let Encoded(encoded, batch, selection) = *self;
                encoded.serialize(|| selection.map_or_else(|| Ok(batch.clone()), |rows| take_rows(batch, rows)), serializer)
            }
        }
        #[derive(Serialize)]
        struct Wire<'a> {
            rows: Encoded<'a>,
            ingested: Encoded<'a>,
            keys: &'a [u128],
            slots: &'a [Slot],
        }
        let [rows, ingested] = &self.encoded;
        let selection = self.selection.as_deref();
        Wire { rows: Encoded(rows, &self.rows, selection), ingested: Encoded(ingested, &self.ingested, selection), keys: &self.keys, slots: &self.slots }
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(with = "ipc")]
            rows: RecordBatch,
            #[serde(with = "ipc")]
            ingested: RecordBatch,
            keys: Vec<u128>,
            slots: Vec<Slot>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Candidates::new(wire.rows, wire.ingested, wire.keys, wire.slots))
    }
}

/// A batch that can cross workers (see [`ipc`], [`EncodedOnce`]).
#[derive(Debug, Clone)]
pub struct Batch(pub RecordBatch, EncodedOnce);

impl Batch {
    pub fn new(batch: RecordBatch) -> Batch {
        Batch(batch, EncodedOnce::default())
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.1.serialize(|| Ok(self.0.clone()), serializer)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        ipc::deserialize(deserializer).map(Batch::new)
    }
}

/// Turns the key columns of a batch into keys.
#[derive(Debug, Clone)]
pub struct KeyMaker {
    columns: Vec<String>,
    kind: KeyKind,
}

/// Why a row has no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// A key column is null (or an empty or blank string).
    Missing(String),
    /// A `uuid` key that is not a UUID; the trimmed text.
    NotUuid(String),
}

/// The keys of a batch's rows ([`KeyMaker::keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Per row its key; 0 for a row in `problems` (which a caller rejects or refuses).
    pub values: Vec<u128>,
    /// The rows without a key, in row order.
    pub problems: Vec<(usize, KeyProblem)>,
    /// Whether every row with a key holds its key column as the curated table does: always for
    /// a key kept as ingested; for a `uuid` key, when each text is already its canonical form.
    pub as_ingested: bool,
}

impl Keys {
    fn problem(&mut self, row: usize, problem: KeyProblem) {
        self.problems.push((row, problem));
        self.values.push(0);
    }

    /// The keys of a batch that must have one in every row (rows read back from curated).
    pub fn all(self, what: &str) -> Result<Vec<u128>> {
        match self.problems.into_iter().next() {
            Some((row, problem)) => Err(Error::User(format!("{what} holds a row ({row}) without a valid key: {problem:?}"))),
            None => Ok(self.values),
        }
    }
}

impl KeyMaker {
    pub fn new(pipeline: &Pipeline) -> KeyMaker {
        KeyMaker { columns: pipeline.key.clone(), kind: pipeline.key_kind }
    }

    /// The key of every row of `batch` (which holds the key columns by name).
    pub fn keys(&self, batch: &RecordBatch) -> Result<Keys> {
        let columns = self
            .columns
            .iter()
            .map(|name| batch.column_by_name(name).cloned().ok_or_else(|| Error::User(format!("key column {name} is missing from the table"))))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = batch.num_rows();
        let mut keys = Keys { values: Vec::with_capacity(rows), problems: Vec::new(), as_ingested: true };
        if self.kind == KeyKind::Uuid {
            let text = columns[0].as_string_opt::<i32>().ok_or_else(|| Error::User(format!("key column {} is not a string", self.columns[0])))?;
            for row in 0..rows {
                let raw = if text.is_valid(row) { text.value(row) } else { "" };
                // Nearly every key arrives in canonical form, which needs no other look.
                if let Some(key) = crate::canonical_uuid::parse(raw.as_bytes()) {
                    keys.values.push(key);
                    continue;
                }
                let value = raw.trim();
                if value.is_empty() {
                    keys.problem(row, KeyProblem::Missing(self.columns[0].clone()));
                    continue;
                }
                match uuid::Uuid::try_parse(value) {
                    Ok(uuid) => {
                        // 36 bytes that parse are the hyphenated form: canonical unless upper case.
                        keys.as_ingested &= raw.len() == 36 && !raw.bytes().any(|b| b.is_ascii_uppercase());
                        keys.values.push(uuid.as_u128());
                    }
                    Err(_) => keys.problem(row, KeyProblem::NotUuid(value.to_string())),
                }
            }
            return Ok(keys);
        }
        // Each row's values as ingested, length-prefixed, one column after the other, in a small
        // buffer of its own; a null (or blank string) is missing. Hashed in one call per row: a
        // streaming hasher per row would allocate its much larger buffer for every row.
        let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); rows];
        let mut missing: Vec<Option<String>> = vec![None; rows];
        for (name, column) in self.columns.iter().zip(&columns) {
            let mut feed = |row: usize, bytes: Option<&[u8]>| match bytes {
                Some(bytes) => {
                    encoded[row].extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    encoded[row].extend_from_slice(bytes);
                }
                None => {
                    missing[row].get_or_insert_with(|| name.clone());
                }
            };
            match column.data_type() {
                DataType::Utf8 => {
                    let a = column.as_string::<i32>();
                    (0..rows).for_each(|row| feed(row, Some(a.value(row)).filter(|v| a.is_valid(row) && !v.trim().is_empty()).map(str::as_bytes)));
                }
                DataType::Int32 => {
                    let a = column.as_primitive::<arrow::datatypes::Int32Type>();
                    (0..rows).for_each(|row| feed(row, a.is_valid(row).then(|| a.value(row).to_le_bytes()).as_ref().map(|b| &b[..])));
                }
                DataType::Int64 => {
                    let a = column.as_primitive::<arrow::datatypes::Int64Type>();
                    (0..rows).for_each(|row| feed(row, a.is_valid(row).then(|| a.value(row).to_le_bytes()).as_ref().map(|b| &b[..])));
                }
                DataType::Binary => {
                    let a = column.as_binary::<i32>();
                    (0..rows).for_each(|row| feed(row, a.is_valid(row).then(|| a.value(row))));
                }
                DataType::LargeBinary => {
                    let a = column.as_binary::<i64>();
                    (0..rows).for_each(|row| feed(row, a.is_valid(row).then(|| a.value(row))));
                }
                other => return Err(Error::User(format!("key column {name} is {other}; a key is a string, int, long or binary"))),
            }
        }
        for (row, (bytes, missing)) in encoded.into_iter().zip(missing).enumerate() {
            match missing {
                Some(name) => keys.problem(row, KeyProblem::Missing(name)),
                None => keys.values.push(twox_hash::XxHash3_128::oneshot(&bytes)),
            }
        }
        Ok(keys)
    }

    /// Whether curated holds the key columns rewritten (a UUID's canonical form).
    pub fn canonical(&self) -> bool {
        self.kind == KeyKind::Uuid
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}

/// Canonical text of a UUID key.
///
/// Every value is 36 bytes, so the text is printed straight into one buffer of them all, and the
/// offsets are multiples of 36: a builder's per-value bookkeeping cost as much as the printing.
pub fn uuid_text(keys: &[u128]) -> Result<StringArray> {
    const LENGTH: usize = uuid::fmt::Hyphenated::LENGTH;
    if keys.len().checked_mul(LENGTH).is_none_or(|bytes| bytes > i32::MAX as usize) {
        return Err(Error::Internal(format!("{} keys do not fit one string column", keys.len())));
    }
    let mut text = vec![0u8; keys.len() * LENGTH];
    for (key, out) in keys.iter().zip(text.as_chunks_mut::<LENGTH>().0) {
        crate::canonical_uuid::print(*key, out);
    }
    let offsets = arrow::buffer::OffsetBuffer::<i32>::from_lengths(std::iter::repeat_n(LENGTH, keys.len()));
    // SAFETY: the text is ASCII (hex digits and hyphens) and every offset falls between two values.
    Ok(unsafe { StringArray::new_unchecked(offsets, text.into(), None) })
}

/// A UUID key's column, left out of the curated rows while they wait in the upsert and the
/// curated writer, and printed back from the 128-bit key when they are written or rejected: every
/// waiting row travels with its key anyway, and the key's text is 40 of a ratings row's ~95 bytes.
/// Only UUID keys: their curated column is by definition the key's canonical form (no plugin or
/// stage may replace a key column); any other key is kept exactly as ingested, in the rows.
#[derive(Debug, Clone)]
pub struct PrintedKey {
    index: usize,
    field: arrow::datatypes::FieldRef,
}

impl PrintedKey {
    /// For a UUID key, its column's place in `schema` (the curated rows' columns); `None` for any
    /// other key.
    pub fn of(pipeline: &Pipeline, schema: &arrow::datatypes::Schema) -> Result<Option<PrintedKey>> {
        if pipeline.key_kind != KeyKind::Uuid {
            return Ok(None);
        }
        let name = &pipeline.key[0];
        let index = schema.index_of(name).map_err(|_| Error::Internal(format!("key column {name} is not among the curated columns")))?;
        Ok(Some(PrintedKey { index, field: schema.fields()[index].clone() }))
    }

    /// `rows` without the key's column.
    pub fn strip(&self, mut rows: RecordBatch) -> RecordBatch {
        rows.remove_column(self.index);
        rows
    }

    /// `rows` (stripped) with the key's column printed back from `keys`, one per row.
    pub fn restore(&self, rows: &RecordBatch, keys: &[u128]) -> Result<RecordBatch> {
        let schema = rows.schema();
        let mut fields = schema.fields().to_vec();
        fields.insert(self.index, self.field.clone());
        let mut columns = rows.columns().to_vec();
        columns.insert(self.index, Arc::new(uuid_text(keys)?));
        let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
        let schema = arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone());
        RecordBatch::try_new_with_options(Arc::new(schema), columns, &options).context(|| format!("printing the key column {} back", self.field.name()))
    }
}

/// 64-bit hashes of each row's values in `columns` (types and values, nulls included): equal rows
/// hash equal in every run and process.
///
/// Column by column, in place: a row's hash so far, mixed with the column's type, seeds the xxh3
/// hash of its next value. Strings, binaries, booleans and fixed-width values (numbers, dates,
/// times, decimals) are hashed from their bytes where they lie; nested columns (lists, structs,
/// maps) are encoded to arrow's row format one column at a time. Encoding whole rows first cost
/// a copy of every value and ~3% of a stream's CPU (benches/README.md).
pub fn fingerprints(columns: &[ArrayRef]) -> Result<Vec<u64>> {
    use twox_hash::XxHash3_64;
    /// Seeds a null apart from every value (an empty string included).
    const NULL: u64 = 0x6e75_6c6c_6e75_6c6c;
    /// Seeds a value hashed in two steps (one longer than xxh3's short-input cutoff, where a seed
    /// of its own would cost deriving a secret per value) apart from one hashed directly.
    const LONG: u64 = 0x6c6f_6e67_6c6f_6e67;
    const SHORT_INPUT: usize = 240;
    let rows = columns.first().map_or(0, |c| c.len());
    let mut prints = vec![0u64; rows];
    for column in columns {
        // The column's type, so equal bytes of two types differ. A nested type's text names its
        // fields, which a file read back may name otherwise (`item` / `element`): nested columns
        // share one tag, as arrow's row format (which hashes their values) ignores names too.
        let tag = match column.data_type().is_nested() {
            true => XxHash3_64::oneshot(b"nested"),
            false => XxHash3_64::oneshot(format!("{:?}", column.data_type()).as_bytes()),
        };
        let mix = |print: &mut u64, value: Option<&[u8]>| {
            let seed = *print ^ tag;
            *print = match value {
                None => XxHash3_64::oneshot_with_seed(seed ^ NULL, &[]),
                Some(bytes) if bytes.len() <= SHORT_INPUT => XxHash3_64::oneshot_with_seed(seed, bytes),
                Some(bytes) => XxHash3_64::oneshot_with_seed(seed ^ LONG, &XxHash3_64::oneshot(bytes).to_le_bytes()),
            }
        };
        let nulls = column.logical_nulls();
        let valid = |row: usize| nulls.as_ref().is_none_or(|nulls| nulls.is_valid(row));
        macro_rules! hash_values {
            ($array:expr) => {{
                let array = $array;
                for (row, print) in prints.iter_mut().enumerate() {
                    mix(print, valid(row).then(|| <[u8] as AsRef<[u8]>>::as_ref(array.value(row).as_ref())));
                }
            }};
        }
        match column.data_type() {
            DataType::Utf8 => hash_values!(column.as_string::<i32>()),
            DataType::LargeUtf8 => hash_values!(column.as_string::<i64>()),
            DataType::Utf8View => hash_values!(column.as_string_view()),
            DataType::Binary => hash_values!(column.as_binary::<i32>()),
            DataType::LargeBinary => hash_values!(column.as_binary::<i64>()),
            DataType::BinaryView => hash_values!(column.as_binary_view()),
            DataType::FixedSizeBinary(_) => hash_values!(column.as_fixed_size_binary()),
            DataType::Boolean => {
                let booleans = column.as_boolean();
                for (row, print) in prints.iter_mut().enumerate() {
                    mix(print, valid(row).then(|| if booleans.value(row) { &[1u8][..] } else { &[0u8][..] }));
                }
            }
            DataType::Null => prints.iter_mut().for_each(|print| mix(print, None)),
            data_type if data_type.is_primitive() => {
                let width = data_type.primitive_width().ok_or_else(|| Error::Internal(format!("{data_type} has no width")))?;
                let data = column.to_data();
                let bytes = &data.buffers()[0].as_slice()[data.offset() * width..];
                for (row, print) in prints.iter_mut().enumerate() {
                    mix(print, valid(row).then(|| &bytes[row * width..(row + 1) * width]));
                }
            }
            _ => {
                let column = maps_as_lists(column)?;
                let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(column.data_type().clone())])
                    .context(|| "encoding values to fingerprint them".into())?;
                let encoded = converter.convert_columns(&[column]).context(|| "encoding values to fingerprint them".into())?;
                for (print, value) in prints.iter_mut().zip(encoded.iter()) {
                    mix(print, Some(value.as_ref()));
                }
            }
        }
    }
    Ok(prints)
}

/// `array` with every map in it (at any depth) as the list of key-value structs it is stored as:
/// arrow's row format, which the fingerprints hash, encodes lists but not maps. The entries keep
/// their order, so equal maps still fingerprint equal.
fn maps_as_lists(array: &ArrayRef) -> Result<ArrayRef> {
    let nested = |array: &ArrayRef| -> Result<ArrayRef> { maps_as_lists(array) };
    Ok(match array.data_type() {
        DataType::Map(..) => {
            let map = array.as_map();
            let entries: ArrayRef = Arc::new(map.entries().clone());
            let entries = nested(&entries)?;
            let field = Arc::new(arrow::datatypes::Field::new("entries", entries.data_type().clone(), false));
            Arc::new(ListArray::try_new(field, map.offsets().clone(), entries, map.nulls().cloned()).context(|| "a map's entries as a list".into())?)
        }
        DataType::List(field) if contains_map(field.data_type()) => {
            let list = array.as_list::<i32>();
            let values = nested(list.values())?;
            let field = Arc::new(field.as_ref().clone().with_data_type(values.data_type().clone()));
            Arc::new(ListArray::try_new(field, list.offsets().clone(), values, list.nulls().cloned()).context(|| "a list of maps".into())?)
        }
        DataType::Struct(fields) if contains_map(array.data_type()) => {
            let record = array.as_struct();
            let children: Vec<ArrayRef> = record.columns().iter().map(nested).collect::<Result<_>>()?;
            let fields: Vec<arrow::datatypes::Field> =
                fields.iter().zip(&children).map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone())).collect();
            Arc::new(StructArray::try_new(fields.into(), children, record.nulls().cloned()).context(|| "a struct holding a map".into())?)
        }
        _ => array.clone(),
    })
}

fn contains_map(data_type: &DataType) -> bool {
    match data_type {
        DataType::Map(..) => true,
        DataType::List(field) => contains_map(field.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| contains_map(f.data_type())),
        _ => false,
    }
}

/// The coordinates every rejectable row carries.
pub const COORDINATES: [&str; 4] = ["source_topic", "source_partition", "source_offset", "ingestion_ts_ms"];

/// A batch of the rejected table's `schema` for the rows of `source`, which holds the coordinate
/// columns ([`COORDINATES`]), optionally `payload`, and event columns by name (any the rejected
/// table has that `source` lacks are null).
pub fn rejected_batch(schema: &SchemaRef, source: &RecordBatch, reasons: Vec<String>, details: Vec<String>) -> Result<RecordBatch> {
    let rows = source.num_rows();
    let ingestion = source
        .column_by_name("ingestion_ts_ms")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| Error::Internal("rejected rows without ingestion_ts_ms".into()))?;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "reason" => Arc::new(StringArray::from(reasons.clone())),
            "detail" => Arc::new(StringArray::from(details.clone())),
            "ingestion_date" => Arc::new(Date32Array::from_iter_values(ingestion.values().iter().map(|ms| day_of_millis(*ms)))),
            name => match source.column_by_name(name) {
                Some(column) if column.data_type() == field.data_type() => column.clone(),
                Some(column) => arrow::compute::cast(column, field.data_type()).context(|| format!("rejected column {name}"))?,
                None => new_null_array(field.data_type(), rows),
            },
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).context(|| "assembling rejected rows".into())
}

/// Where a batch's rows came from: their ingestion positions, read row by row from the lineage
/// (or raw coordinate) columns in place, so no list of positions is built for a pass that reads
/// each one once.
pub struct Positions<'a> {
    ingestion: &'a arrow::array::Int64Array,
    partition: &'a arrow::array::Int32Array,
    offset: &'a arrow::array::Int64Array,
}

impl<'a> Positions<'a> {
    pub fn of(batch: &'a RecordBatch) -> Result<Self> {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| Error::User(format!("column {name} is missing from the table")));
        Ok(Positions {
            ingestion: column("ingestion_ts_ms")?.as_primitive_opt().ok_or_else(|| Error::User("ingestion_ts_ms is not a long".into()))?,
            partition: column("source_partition")?.as_primitive_opt().ok_or_else(|| Error::User("source_partition is not an int".into()))?,
            offset: column("source_offset")?.as_primitive_opt().ok_or_else(|| Error::User("source_offset is not a long".into()))?,
        })
    }

    pub fn get(&self, row: usize) -> IngestPosition {
        IngestPosition { ingestion_ts_ms: self.ingestion.value(row), partition: self.partition.value(row), offset: self.offset.value(row) }
    }

    pub fn iter(&self) -> impl Iterator<Item = IngestPosition> + '_ {
        (0..self.ingestion.len()).map(|row| self.get(row))
    }

    /// The latest ingestion time of the rows (milliseconds), `None` for no rows.
    pub fn newest_ingestion_ms(&self) -> Option<i64> {
        arrow::compute::max(self.ingestion)
    }
}

/// Whether [`order_values`] reads a column of this type.
pub fn is_order_type(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _))
}

/// The 64-bit number of an order value: integers, dates (days), timestamps (their unit); `None`
/// for a null.
pub fn order_values(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    use arrow::datatypes::{Date32Type, Int32Type, Int64Type, TimestampMicrosecondType};
    Ok(match column.data_type() {
        DataType::Int32 => column.as_primitive::<Int32Type>().iter().map(|v| v.map(i64::from)).collect(),
        DataType::Int64 => column.as_primitive::<Int64Type>().iter().collect(),
        DataType::Date32 => column.as_primitive::<Date32Type>().iter().map(|v| v.map(i64::from)).collect(),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => column.as_primitive::<TimestampMicrosecondType>().iter().collect(),
        other => return Err(Error::User(format!("an order column of type {other} is not supported"))),
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn rows_holding_maps_fingerprint_equal_when_equal_at_any_depth() {
        use arrow::array::builder::{Int64Builder, ListBuilder, MapBuilder, StringBuilder};
        let mut maps = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
        for entries in [&[("x", 1)][..], &[("x", 1)], &[("x", 2)], &[], &[("y", 1)]] {
            for (key, value) in entries {
                maps.keys().append_value(key);
                maps.values().append_value(*value);
            }
            maps.append(true).unwrap();
        }
        maps.append(false).unwrap();
        let maps: ArrayRef = Arc::new(maps.finish());
        let prints = fingerprints(&[maps.clone()]).unwrap();
        assert_eq!(prints[0], prints[1]);
        let distinct: std::collections::HashSet<u64> = prints[1..].iter().copied().collect();
        assert_eq!(distinct.len(), 5, "different maps, an empty one and a null one all differ: {prints:?}");
        // The same maps as list items, and inside a struct.
        let mut lists = ListBuilder::new(MapBuilder::new(None, StringBuilder::new(), Int64Builder::new()));
        for value in [1, 1, 2] {
            lists.values().keys().append_value("k");
            lists.values().values().append_value(value);
            lists.values().append(true).unwrap();
            lists.append(true);
        }
        let lists: ArrayRef = Arc::new(lists.finish());
        let record: ArrayRef = Arc::new(StructArray::from(vec![(
            Arc::new(arrow::datatypes::Field::new("m", maps.data_type().clone(), true)),
            maps.slice(0, 3),
        )]));
        let prints = fingerprints(&[lists, record]).unwrap();
        assert_eq!(prints[0], prints[1]);
        assert_ne!(prints[1], prints[2]);
    }

    /// Seeded random rows of many column types, a third of them copies of others: two rows
    /// fingerprint equal exactly when arrow's row format (the oracle) encodes them equal, and a
    /// slice of the columns fingerprints as the same rows do unsliced.
    #[test]
    fn rows_fingerprint_equal_exactly_when_their_values_are_equal() {
        use arrow::array::builder::{Int32Builder, ListBuilder};
        use arrow::array::{BinaryArray, BooleanArray, Date32Array, Float32Array, LargeStringArray, Int32Array};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        const ROWS: usize = 3000;
        // Row i copies row source[i]: its own values for two thirds of the rows.
        let source: Vec<usize> = (0..ROWS).map(|i| if i > 0 && rng.random_bool(0.33) { rng.random_range(0..i) } else { i }).collect();
        let pick = |values: Vec<Option<u32>>| -> Vec<Option<u32>> { (0..ROWS).map(|i| values[source[i]]).collect() };
        let mut random = |nulls: f64, range: u32| -> Vec<Option<u32>> {
            let values = (0..ROWS).map(|_| (!rng.random_bool(nulls)).then(|| rng.random_range(0..range))).collect();
            pick(values)
        };
        let text: StringArray = random(0.1, 4).iter().map(|v| v.map(|v| "ab".repeat(v as usize))).collect();
        let long: LargeStringArray = random(0.1, 3).iter().map(|v| v.map(|v| format!("{v}").repeat(300))).collect();
        let binary: BinaryArray = random(0.1, 3).iter().map(|v| v.map(|v| vec![v as u8; v as usize])).collect();
        let ints: Int32Array = random(0.1, 3).iter().map(|v| v.map(|v| v as i32)).collect();
        let floats: Float32Array = random(0.1, 3).iter().map(|v| v.map(|v| if v == 2 { -0.0 } else { v as f32 })).collect();
        let flags: BooleanArray = random(0.1, 2).iter().map(|v| v.map(|v| v == 1)).collect();
        let days: Date32Array = random(0.1, 3).iter().map(|v| v.map(|v| v as i32)).collect();
        let mut lists = ListBuilder::new(Int32Builder::new());
        for value in random(0.1, 3) {
            match value {
                Some(length) => {
                    (0..length).for_each(|item| lists.values().append_value(item as i32));
                    lists.append(true);
                }
                None => lists.append(false),
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(text),
            Arc::new(long),
            Arc::new(binary),
            Arc::new(ints),
            Arc::new(floats),
            Arc::new(flags),
            Arc::new(days),
            Arc::new(lists.finish()),
        ];
        let prints = fingerprints(&columns).unwrap();
        let fields = columns.iter().map(|c| arrow::row::SortField::new(c.data_type().clone())).collect();
        let oracle = arrow::row::RowConverter::new(fields).unwrap().convert_columns(&columns).unwrap();
        let mut equal_pairs = 0;
        for a in 0..ROWS {
            for b in (a + 1..ROWS).step_by(7) {
                let equal = oracle.row(a) == oracle.row(b);
                equal_pairs += usize::from(equal);
                assert_eq!(prints[a] == prints[b], equal, "rows {a} and {b}");
            }
        }
        assert!(equal_pairs > 100, "the test plants equal rows: {equal_pairs}");
        let sliced: Vec<ArrayRef> = columns.iter().map(|c| c.slice(1000, 500)).collect();
        assert_eq!(fingerprints(&sliced).unwrap(), prints[1000..1500]);
        // A null is not an empty value, and equal bytes of two types are not equal values.
        let nullable: ArrayRef = Arc::new(StringArray::from(vec![Some(""), None]));
        let prints = fingerprints(&[nullable]).unwrap();
        assert_ne!(prints[0], prints[1]);
        // A list read back with its item field named otherwise is the same value.
        let list = columns[7].as_list::<i32>();
        let renamed = Arc::new(arrow::datatypes::Field::new("element", DataType::Int32, true));
        let renamed: ArrayRef =
            Arc::new(ListArray::try_new(renamed, list.offsets().clone(), list.values().clone(), list.nulls().cloned()).unwrap());
        assert_eq!(fingerprints(&[renamed]).unwrap(), fingerprints(&[columns[7].clone()]).unwrap());
        let as_int: ArrayRef = Arc::new(Int32Array::from(vec![7]));
        let as_date: ArrayRef = Arc::new(Date32Array::from(vec![7]));
        assert_ne!(fingerprints(&[as_int]).unwrap(), fingerprints(&[as_date]).unwrap());
    }

    #[test]
    fn ordering_by_number_columns_matches_arrows_lexsort_with_nulls_first() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let value = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_bool(0.9).then(|| rng.random_range(-3..4i64));
        let a: Int64Array = (0..500).map(|_| value(&mut rng)).collect();
        let b: arrow::array::Int32Array = (0..500).map(|_| value(&mut rng).map(|v| v as i32)).collect();
        let c: Int64Array = (0..500i64).map(Some).collect();
        let rows = batch(vec![("a", Arc::new(a) as ArrayRef), ("b", Arc::new(b) as ArrayRef), ("c", Arc::new(c) as ArrayRef)]);
        let sorted = sorted_by(&rows, &["a", "b", "c"]).unwrap();
        let columns: Vec<arrow::compute::SortColumn> =
            ["a", "b", "c"].iter().map(|name| arrow::compute::SortColumn { values: rows.column_by_name(name).unwrap().clone(), options: None }).collect();
        let oracle = arrow::compute::take_record_batch(&rows, &arrow::compute::lexsort_to_indices(&columns, None).unwrap()).unwrap();
        assert_eq!(sorted, oracle);
    }

    #[test]
    fn interleaving_rows_equals_arrows_interleave_with_booleans_nulls_and_text() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let part = |rng: &mut rand_chacha::ChaCha8Rng, rows: usize, nulls: bool| {
            let valid = |rng: &mut rand_chacha::ChaCha8Rng| !nulls || rng.random_bool(0.8);
            let flags: arrow::array::BooleanArray = (0..rows).map(|_| valid(rng).then(|| rng.random_bool(0.5))).collect();
            let numbers: Int64Array = (0..rows).map(|i| valid(rng).then_some(i as i64)).collect();
            let text: StringArray = (0..rows).map(|i| valid(rng).then(|| format!("row {i}"))).collect();
            let columns = [("flag", Arc::new(flags) as ArrayRef, true), ("n", Arc::new(numbers) as ArrayRef, true), ("t", Arc::new(text) as ArrayRef, true)];
            RecordBatch::try_from_iter_with_nullable(columns).unwrap()
        };
        for case in 0..100 {
            let sizes: Vec<usize> = (0..rng.random_range(1..4)).map(|_| rng.random_range(1..200)).collect();
            let parts: Vec<RecordBatch> = sizes.iter().enumerate().map(|(p, &rows)| part(&mut rng, rows, case % 2 == 0 || p == 1)).collect();
            let refs: Vec<&RecordBatch> = parts.iter().collect();
            let indices: Vec<(usize, usize)> = (0..rng.random_range(0..400))
                .map(|_| {
                    let batch = rng.random_range(0..parts.len());
                    (batch, rng.random_range(0..parts[batch].num_rows()))
                })
                .collect();
            let oracle = arrow::compute::interleave_record_batch(&refs, &indices).unwrap();
            let gathered = interleave_rows(&refs, &indices).unwrap();
            assert_eq!(gathered, oracle, "case {case}");
            assert_eq!(gathered.column(0).null_count(), oracle.column(0).null_count());
        }
        let one = part(&mut rng, 3, false);
        assert!(interleave_rows(&[&one], &[(0, 3)]).is_err(), "a row past the end is an error, not a panic");
        assert!(interleave_rows(&[&one], &[(1, 0)]).is_err(), "so is a batch past the last");
        assert!(interleave_rows(&[], &[]).is_err());
        assert!(interleave_rows(&[&one, &one.project(&[0, 1]).unwrap()], &[(1, 0)]).is_err(), "batches of other shapes are an error, not a panic");
    }

    #[test]
    fn taking_rows_equals_arrows_take_for_ascending_unordered_repeated_and_all_rows() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = 300;
        let numbers: Int64Array = (0..n).map(|i| rng.random_bool(0.9).then_some(i as i64)).collect();
        let text: StringArray = (0..n).map(|i| rng.random_bool(0.9).then(|| format!("row {i}"))).collect();
        let rows = batch(vec![("n", Arc::new(numbers) as ArrayRef), ("t", Arc::new(text) as ArrayRef)]);
        let mut ascending_seen = 0;
        for case in 0..200 {
            let mut picked: Vec<u32> = match case % 4 {
                // Most rows kept, in order (a batch less its rejections).
                0 => (0..n as u32).filter(|_| rng.random_bool(0.97)).collect(),
                // About half, in order (one worker's share).
                1 => (0..n as u32).filter(|_| rng.random_bool(0.5)).collect(),
                // All of them.
                2 => (0..n as u32).collect(),
                // Any rows, repeated, in any order.
                _ => (0..rng.random_range(0..n)).map(|_| rng.random_range(0..n as u32)).collect(),
            };
            if case % 4 == 3 && rng.random_bool(0.5) {
                picked.sort_unstable();
            }
            ascending_seen += usize::from(picked.windows(2).all(|pair| pair[0] < pair[1]));
            let oracle = arrow::compute::take_record_batch(&rows, &arrow::array::UInt32Array::from(picked.clone())).unwrap();
            assert_eq!(take_rows(&rows, &picked).unwrap(), oracle, "case {case}: rows {picked:?}");
        }
        assert!(ascending_seen > 140, "only {ascending_seen} cases took ascending rows");
        assert!(take_rows(&rows, &[0, n as u32]).is_err(), "a row past the end is an error");
        assert!(take_rows(&rows, &[n as u32, 0]).is_err(), "in any order");
    }

    #[test]
    fn an_exact_key_is_its_values_as_ingested_and_composite_keys_do_not_run_together() {
        let keys = KeyMaker { columns: vec!["a".into(), "b".into()], kind: KeyKind::Exact };
        let rows = batch(vec![
            ("a", Arc::new(StringArray::from(vec![Some("ab"), Some("a"), Some("AB"), Some("ab"), None])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec![Some("c"), Some("bc"), Some("c"), Some("c"), Some("x")])) as ArrayRef),
        ]);
        let made = keys.keys(&rows).unwrap();
        let values = &made.values;
        assert_ne!(values[0], values[1], "(ab, c) and (a, bc) are two keys");
        assert_ne!(values[0], values[2], "another spelling is another key");
        assert_eq!(values[0], values[3], "the same values are the same key");
        assert_eq!(made.problems, vec![(4, KeyProblem::Missing("a".into()))]);
        assert!(made.as_ingested, "an exact key is always held as ingested");
    }

    #[test]
    fn a_uuid_key_is_as_ingested_only_when_every_text_is_its_canonical_form() {
        let keys = KeyMaker { columns: vec!["id".into()], kind: KeyKind::Uuid };
        let canonical = "0123abcd-0000-4000-8000-00000000beef";
        let made = |texts: Vec<Option<&str>>| keys.keys(&batch(vec![("id", Arc::new(StringArray::from(texts)) as ArrayRef)])).unwrap();
        let plain = made(vec![Some(canonical), Some(canonical), None, Some("not a uuid")]);
        assert!(plain.as_ingested, "rows without a key do not count");
        assert_eq!(plain.values[0], uuid::Uuid::parse_str(canonical).unwrap().as_u128());
        assert_eq!(plain.problems, vec![(2, KeyProblem::Missing("id".into())), (3, KeyProblem::NotUuid("not a uuid".into()))]);
        let simple = canonical.replace('-', "");
        for other in ["0123ABCD-0000-4000-8000-00000000BEEF", &simple, "{0123abcd-0000-4000-8000-00000000beef}", " 0123abcd-0000-4000-8000-00000000beef"] {
            let spelled = made(vec![Some(canonical), Some(other)]);
            assert!(spelled.problems.is_empty(), "{other}");
            assert_eq!(spelled.values[0], spelled.values[1], "{other} is the same key");
            assert!(!spelled.as_ingested, "{other} is not how curated holds the key");
        }
    }

    #[test]
    fn a_uuid_key_column_printed_back_from_its_keys_is_the_column_it_was() {
        let pipeline = crate::test_fixture::ratings_pipeline();
        let keys: Vec<u128> = vec![0, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef];
        let rows = batch(vec![
            ("user_id", Arc::new(StringArray::from(vec!["u1", "u2", "u3"])) as ArrayRef),
            ("event_id", Arc::new(uuid_text(&keys).unwrap()) as ArrayRef),
            ("rating_timestamp", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ]);
        let printed = PrintedKey::of(&pipeline, &rows.schema()).unwrap().expect("a uuid key is printed");
        let stripped = printed.strip(rows.clone());
        assert_eq!(stripped.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["user_id", "rating_timestamp"]);
        assert_eq!(printed.restore(&stripped, &keys).unwrap(), rows);
        assert_eq!(rows.column(1).as_string::<i32>().value(1), "ffffffff-ffff-ffff-ffff-ffffffffffff");

        let exact = Pipeline { key_kind: KeyKind::Exact, ..pipeline };
        assert!(PrintedKey::of(&exact, &rows.schema()).unwrap().is_none(), "any other key stays in the rows as ingested");
    }

    #[test]
    fn uuid_text_prints_every_key_as_the_uuid_crate_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let keys: Vec<u128> = (0..1000).map(|_| rng.random()).chain([0, u128::MAX]).collect();
        let text = uuid_text(&keys).unwrap();
        let oracle: Vec<String> = keys.iter().map(|key| uuid::Uuid::from_u128(*key).hyphenated().to_string()).collect();
        assert_eq!(text.iter().map(Option::unwrap).collect::<Vec<_>>(), oracle);
        assert_eq!((text.null_count(), uuid_text(&[]).unwrap().len()), (0, 0));
    }

    #[test]
    fn a_batch_sent_twice_is_encoded_once_and_reads_back_unchanged() {
        let rows = batch(vec![
            ("seq", Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec![Some("a"), Some(""), None])) as ArrayRef),
        ]);
        // A slice, as exchanges send: only its rows travel.
        let sent = Batch::new(rows.slice(1, 2));
        let (first, second) = (serde_json::to_string(&sent).unwrap(), serde_json::to_string(&sent).unwrap());
        assert_eq!(first, second, "the size pass and the write pass send the same bytes");
        assert!(sent.1.0.get().is_some(), "the encoding is kept after the first pass");
        let back: Batch = serde_json::from_str(&first).unwrap();
        assert_eq!(back.0, rows.slice(1, 2));
    }

    #[test]
    fn candidates_cross_processes_as_arrow_ipc_unchanged() {
        let rows = batch(vec![("seq", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)]);
        let ingested = RecordBatch::try_new_with_options(
            Arc::new(arrow::datatypes::Schema::empty()),
            Vec::new(),
            &RecordBatchOptions::new().with_row_count(Some(2)),
        )
        .unwrap();
        let slot = Slot {
            position: IngestPosition { ingestion_ts_ms: 5, partition: 1, offset: 9 },
            origin: Origin::Input,
            order: 7,
            day: 3,
            fingerprint: 11,
        };
        let candidates = Candidates::new(rows, ingested, vec![u128::MAX, 3], vec![slot, slot]);
        let wire = serde_json::to_string(&candidates).unwrap();
        let back: Candidates = serde_json::from_str(&wire).unwrap();
        assert_eq!((back.rows, back.keys, back.slots), (candidates.rows, candidates.keys, candidates.slots));
        assert_eq!(back.ingested.num_rows(), 2, "a batch of no columns keeps its row count");
    }

    #[test]
    fn a_share_refers_to_its_rows_and_crosses_processes_as_them_alone() {
        let rows = batch(vec![("seq", Arc::new(Int64Array::from(vec![10, 11, 12, 13])) as ArrayRef)]);
        let ingested = batch(vec![("as_ingested", Arc::new(StringArray::from(vec![None, Some("b"), None, Some("d")])) as ArrayRef)]);
        let slot = |order| Slot { position: IngestPosition { ingestion_ts_ms: 5, partition: 1, offset: order }, origin: Origin::Input, order, day: 3, fingerprint: 0 };
        let candidates = Candidates::new(rows.clone(), ingested, vec![0, 1, 2, 3], (10..14).map(slot).collect());
        let [evens, share]: [Candidates; 2] = candidates.split(2, |key| (key % 2) as usize).unwrap().try_into().unwrap();
        let [again, _]: [Candidates; 2] = share.split(2, |key| usize::from(key == 3)).unwrap().try_into().unwrap();
        assert_eq!((share.keys.as_slice(), share.row_of(0), share.row_of(1)), (&[1, 3][..], 1, 3));
        assert_eq!((evens.keys.as_slice(), evens.row_of(1)), (&[0, 2][..], 2));
        assert_eq!((again.keys.as_slice(), again.row_of(0)), (&[1][..], 1), "a share of a share refers to the first batch");
        assert_eq!(share.rows.num_rows(), 4, "the batch is shared, not copied");
        assert_eq!(share.slots, [slot(11), slot(13)]);
        let thirds = candidates.split(3, |key| (key % 3) as usize).unwrap();
        assert_eq!(thirds.iter().map(|t| t.keys.clone()).collect::<Vec<_>>(), [vec![0, 3], vec![1], vec![2]]);
        assert_eq!((thirds[0].row_of(1), thirds[0].rows.num_rows()), (3, 4), "a split refers to the batch too");
        let halves = again.split(2, |key| (key % 2) as usize).unwrap();
        assert_eq!(halves.iter().map(|h| h.len()).collect::<Vec<_>>(), [0, 1], "an empty share is kept, in its place");
        assert!(candidates.split(2, |key| key as usize).is_err(), "a share past the last is refused, not a panic");
        let wire = serde_json::to_string(&share).unwrap();
        assert_eq!(serde_json::to_string(&share).unwrap(), wire, "the size pass and the write pass send the same bytes");
        let back: Candidates = serde_json::from_str(&wire).unwrap();
        let seq = |b: &RecordBatch| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert_eq!((seq(&back.rows), back.row_of(1)), (vec![11, 13], 1));
        assert_eq!(back.keys, [1, 3]);
        assert_eq!(back.ingested.column(0).as_string::<i32>().iter().collect::<Vec<_>>(), [Some("b"), Some("d")]);
        assert_eq!(back.slots, share.slots);
    }
}
