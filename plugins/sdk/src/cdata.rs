//! Moving batches across the plugin ABI through the Arrow C Data Interface, with a fast path for
//! the batches rules see: a struct of *flat* columns (fixed width, boolean, strings and binaries;
//! no children, no dictionary).
//!
//! arrow-rs's `ffi` module handles every type, but its generality costs on every call: a layout
//! table built per array, a `Vec` per buffer list, private data and child boxes per array, and
//! several copies of the large `ArrayData`/builder structs. On a 64k-row batch through the
//! approval rule that was ~3 µs, over a tenth of the whole call. Here:
//!
//! - **export**: a flat column is one allocation holding the column (an `ArrayRef`, so the
//!   buffers stay alive) and its buffer pointers, read through the typed array; the struct around
//!   the columns is one more. A column that is not flat, or whose null bitmap does not start at
//!   the column's offset, is exported by arrow-rs instead, as a child of the same struct.
//! - **import**: each buffer of a flat column is wrapped, without copying, around one shared owner
//!   of the producer's struct (released through the producer's callback when the last buffer is
//!   dropped), with lengths computed from the column's type, length and offset. Booleans and
//!   numbers become typed arrays directly (sizes and alignment checked, nulls counted); strings
//!   and binaries are checked by arrow's own validation ([`Validation`]). A batch the fast path cannot read as-is (a nested
//!   column, a parent with an offset or nulls, a missing buffer, children of other lengths) goes
//!   through arrow-rs's importer, which handles or refuses it as before.
//!
//! Both ends follow the interface's ownership rules: every exported child can be moved out and
//! released on its own, and the parent's release callback releases only the children still there.

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi_and_data_type};
use arrow_array::OffsetSizeTrait;
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, PrimitiveArray, StructArray, downcast_primitive, downcast_primitive_array, make_array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_buffer::alloc::Allocation;
use arrow_data::ArrayData;
use arrow_schema::{DataType, Fields};

/// How much an importer checks of what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Everything arrow can check: buffer sizes and alignment, null counts, offsets, UTF-8. The
    /// engine imports what a plugin returns this way: a plugin's bug becomes an error, never
    /// undefined behaviour later.
    Full,
    /// Buffer sizes and alignment only, not the values. For a batch from a trusted producer that
    /// validated it already (a plugin reading the engine's batch), so strings are not checked
    /// for UTF-8 twice.
    Layout,
}

/// The number of buffers the C Data Interface gives a flat type (validity first), or `None` for
/// a type the fast path does not handle.
fn flat_buffers(data_type: &DataType) -> Option<usize> {
    match data_type {
        DataType::Boolean | DataType::FixedSizeBinary(_) => Some(2),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => Some(3),
        other if other.primitive_width().is_some() => Some(2),
        _ => None,
    }
}

/// What an exported flat column owns: the column, and the buffer pointers the C struct points to.
struct ExportedColumn {
    _column: ArrayRef,
    buffers: [*const c_void; 3],
}

/// What an exported struct owns: its children (the consumer may move any of them out) and the
/// pointer arrays the C struct points to.
struct ExportedStruct {
    children: Box<[FFI_ArrowArray]>,
    child_pointers: Box<[*mut FFI_ArrowArray]>,
    buffers: [*const c_void; 1],
}

unsafe extern "C" fn release_column(array: *mut FFI_ArrowArray) {
    if let Some(array) = unsafe { array.as_mut() } {
        drop(unsafe { Box::from_raw(array.private_data.cast::<ExportedColumn>()) });
        array.release = None;
    }
}

unsafe extern "C" fn release_struct(array: *mut FFI_ArrowArray) {
    if let Some(array) = unsafe { array.as_mut() } {
        // Dropping a child releases it unless the consumer moved it out (its `release` is then
        // null and the drop does nothing).
        drop(unsafe { Box::from_raw(array.private_data.cast::<ExportedStruct>()) });
        array.release = None;
    }
}

/// The C Data Interface view of a flat column: its offset, its buffer pointers (validity first,
/// null without nulls) and how many of them there are, read through the typed array without
/// building an `ArrayData`. `None` for other columns, and for a null bitmap that does not start
/// at the values' offset.
fn flat_view(column: &dyn Array) -> Option<(usize, [*const c_void; 3], usize)> {
    fn pointer(buffer: &Buffer) -> *const c_void {
        buffer.as_ptr().cast()
    }
    fn var_width<O: OffsetSizeTrait>(offsets: &OffsetBuffer<O>, values: &Buffer) -> (usize, *const c_void, *const c_void) {
        (0, pointer(offsets.inner().inner()), pointer(values))
    }
    let (offset, values, second) = downcast_primitive_array! {
        column => (0, pointer(column.values().inner()), ptr::null()),
        DataType::Boolean => {
            let values = column.as_boolean().values();
            (values.offset(), pointer(values.inner()), ptr::null())
        }
        DataType::Utf8 => var_width(column.as_string::<i32>().offsets(), column.as_string::<i32>().values()),
        DataType::LargeUtf8 => var_width(column.as_string::<i64>().offsets(), column.as_string::<i64>().values()),
        DataType::Binary => var_width(column.as_binary::<i32>().offsets(), column.as_binary::<i32>().values()),
        DataType::LargeBinary => var_width(column.as_binary::<i64>().offsets(), column.as_binary::<i64>().values()),
        _ => return None,
    };
    let validity = match column.nulls() {
        None => ptr::null(),
        Some(nulls) if nulls.offset() == offset => pointer(nulls.buffer()),
        Some(_) => return None,
    };
    let count = if second.is_null() { 2 } else { 3 };
    Some((offset, [validity, values, second], count))
}

/// Exports one column: the fast path for a flat one, arrow-rs's exporter for anything else.
pub fn export_array(column: &ArrayRef) -> FFI_ArrowArray {
    let Some((offset, buffers, n_buffers)) = flat_view(column.as_ref()) else {
        return FFI_ArrowArray::new(&column.to_data());
    };
    let (length, null_count) = (column.len() as i64, column.null_count() as i64);
    let mut private = Box::new(ExportedColumn { _column: column.clone(), buffers });
    FFI_ArrowArray {
        length,
        null_count,
        offset: offset as i64,
        n_buffers: n_buffers as i64,
        n_children: 0,
        buffers: private.buffers.as_mut_ptr(),
        children: ptr::null_mut(),
        dictionary: ptr::null_mut(),
        release: Some(release_column),
        private_data: Box::into_raw(private).cast(),
    }
}

/// Exports `columns` as one struct array of `rows` rows without nulls, each column a child. The
/// caller has checked that every column has `rows` rows.
pub fn export_columns(columns: &[ArrayRef], rows: usize) -> FFI_ArrowArray {
    let children: Box<[FFI_ArrowArray]> = columns.iter().map(export_array).collect();
    let mut private = Box::new(ExportedStruct { children, child_pointers: Box::new([]), buffers: [ptr::null()] });
    private.child_pointers = private.children.iter_mut().map(|child| child as *mut FFI_ArrowArray).collect();
    let n_children = private.children.len() as i64;
    FFI_ArrowArray {
        length: rows as i64,
        null_count: 0,
        offset: 0,
        n_buffers: 1,
        n_children,
        buffers: private.buffers.as_mut_ptr(),
        children: if n_children == 0 { ptr::null_mut() } else { private.child_pointers.as_mut_ptr() },
        dictionary: ptr::null_mut(),
        release: Some(release_struct),
        private_data: Box::into_raw(private).cast(),
    }
}

/// A schema exported once and handed out on every call as a copy that shares its strings. Each
/// copy's structs are its own, so a consumer may move any child out and release it alone, as the
/// interface allows; every struct of a copy keeps the original alive until it is released.
pub struct SharedSchema(Arc<OriginalSchema>);

struct OriginalSchema(FFI_ArrowSchema);

// SAFETY: the original is never written after it is exported, only read through copies.
unsafe impl Send for OriginalSchema {}
unsafe impl Sync for OriginalSchema {}

/// What one struct of a copy owns: a hold on the original and the copies of its children.
struct CopiedSchema {
    _original: Arc<OriginalSchema>,
    _children: Box<[FFI_ArrowSchema]>,
    child_pointers: Box<[*mut FFI_ArrowSchema]>,
    dictionary: Option<Box<FFI_ArrowSchema>>,
}

unsafe extern "C" fn release_copied_schema(schema: *mut FFI_ArrowSchema) {
    if let Some(schema) = unsafe { schema.as_mut() } {
        // Children and dictionary still in place are released by their drops.
        drop(unsafe { Box::from_raw(schema.private_data.cast::<CopiedSchema>()) });
        schema.release = None;
    }
}

impl SharedSchema {
    pub fn new(data_type: &DataType) -> Result<SharedSchema, String> {
        let schema = FFI_ArrowSchema::try_from(data_type).map_err(|e| e.to_string())?;
        Ok(SharedSchema(Arc::new(OriginalSchema(schema))))
    }

    /// A copy for the consumer to own and release.
    pub fn export(&self) -> FFI_ArrowSchema {
        self.copy(&self.0.0)
    }

    fn copy(&self, node: &FFI_ArrowSchema) -> FFI_ArrowSchema {
        let mut children: Box<[FFI_ArrowSchema]> = node.children().map(|child| self.copy(child)).collect();
        let child_pointers = children.iter_mut().map(|child| child as *mut FFI_ArrowSchema).collect();
        let dictionary = node.dictionary().map(|dictionary| Box::new(self.copy(dictionary)));
        let mut private = Box::new(CopiedSchema { _original: self.0.clone(), _children: children, child_pointers, dictionary });
        FFI_ArrowSchema {
            format: node.format,
            name: node.name,
            metadata: node.metadata,
            flags: node.flags,
            n_children: node.n_children,
            children: if node.n_children == 0 { ptr::null_mut() } else { private.child_pointers.as_mut_ptr() },
            dictionary: private.dictionary.as_mut().map_or(ptr::null_mut(), |dictionary| &mut **dictionary as *mut FFI_ArrowSchema),
            release: Some(release_copied_schema),
            private_data: Box::into_raw(private).cast(),
        }
    }
}

/// The byte lengths of a flat array's data buffers (after the validity bitmap), read from its
/// type, length and offset (and, for strings and binaries, its last offset), or `None` when the
/// fast path cannot read it: then arrow-rs's importer decides.
///
/// # Safety
/// `array` follows the C Data Interface, and its buffer pointer array has `n_buffers` entries.
unsafe fn flat_lengths(array: &FFI_ArrowArray, data_type: &DataType, rows: i64) -> Option<[usize; 2]> {
    let expected_buffers = flat_buffers(data_type)?;
    if array.release.is_none()
        || array.length != rows
        || array.offset < 0
        || array.n_buffers != expected_buffers as i64
        || array.n_children != 0
        || !array.dictionary.is_null()
        || array.buffers.is_null()
    {
        return None;
    }
    let buffers = unsafe { std::slice::from_raw_parts(array.buffers, expected_buffers) };
    if buffers[1..].iter().any(|buffer| buffer.is_null()) || (buffers[0].is_null() && array.null_count != 0) {
        return None;
    }
    let slots = usize::try_from(array.length.checked_add(array.offset)?).ok()?;
    let bits = slots.div_ceil(8);
    let last_offset = |width: usize| -> Option<usize> {
        // The last offset says how long the values buffer is; the offsets buffer may not be
        // aligned for its type yet (validation refuses that later), so read it unaligned.
        let at = unsafe { buffers[1].cast::<u8>().add(slots * width) };
        let value = if width == 4 {
            i64::from(unsafe { at.cast::<i32>().read_unaligned() })
        } else {
            unsafe { at.cast::<i64>().read_unaligned() }
        };
        usize::try_from(value).ok()
    };
    Some(match data_type {
        DataType::Boolean => [bits, 0],
        DataType::FixedSizeBinary(width) => [slots.checked_mul(usize::try_from(*width).ok()?)?, 0],
        DataType::Utf8 | DataType::Binary => [(slots + 1).checked_mul(4)?, last_offset(4)?],
        DataType::LargeUtf8 | DataType::LargeBinary => [(slots + 1).checked_mul(8)?, last_offset(8)?],
        other => [slots.checked_mul(other.primitive_width()?)?, 0],
    })
}

/// Wraps one flat array's buffers around `owner` and validates the result.
///
/// # Safety
/// `array` lives inside `owner`, follows the C Data Interface, and `lengths` came from
/// [`flat_lengths`] for it.
unsafe fn import_flat(
    owner: &Arc<FFI_ArrowArray>,
    array: &FFI_ArrowArray,
    data_type: &DataType,
    lengths: [usize; 2],
    validation: Validation,
) -> Result<ArrayRef, String> {
    let buffer_count = flat_buffers(data_type).unwrap_or(2);
    let pointers = unsafe { std::slice::from_raw_parts(array.buffers, buffer_count) };
    let slots = array.length as usize + array.offset as usize;
    let wrap = |pointer: *const c_void, len: usize| -> Buffer {
        match NonNull::new(pointer as *mut u8) {
            // Zero-length buffers may carry any pointer; arrow wants its own empty buffer then.
            Some(pointer) if len > 0 => unsafe {
                Buffer::from_custom_allocation(pointer, len, owner.clone() as Arc<dyn Allocation>)
            },
            _ => Buffer::from(Vec::<u8>::new()),
        }
    };
    let validity = (!pointers[0].is_null()).then(|| wrap(pointers[0], slots.div_ceil(8)));
    let (len, offset) = (array.length as usize, array.offset as usize);
    let values = wrap(pointers[1], lengths[0]);
    if let Some(typed) = import_fixed_width(data_type, &validity, &values, offset, len) {
        return typed;
    }
    let mut data = vec![values];
    if let Some(pointer) = pointers.get(2) {
        data.push(wrap(*pointer, lengths[1]));
    }
    let data = match validation {
        Validation::Full => ArrayData::try_new(data_type.clone(), len, validity, offset, data, Vec::new()),
        // SAFETY: `validate` right after checks every buffer's size and alignment, which is what
        // reading the array needs; the values are the trusted producer's word.
        Validation::Layout => {
            let data = unsafe { ArrayData::new_unchecked(data_type.clone(), len, None, validity, offset, data, Vec::new()) };
            data.validate().map(|()| data)
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(make_array(data))
}

macro_rules! primitive_array {
    ($primitive:ty, $data_type:expr, $values:expr, $nulls:expr, $offset:expr, $len:expr) => {{
        type Native = <$primitive as ArrowPrimitiveType>::Native;
        let values: &Buffer = $values;
        Some(if values.as_ptr().align_offset(std::mem::align_of::<Native>()) != 0 {
            Err(format!("the values buffer is not aligned for {}", $data_type))
        } else {
            PrimitiveArray::<$primitive>::try_new(ScalarBuffer::<Native>::new(values.clone(), $offset, $len), $nulls)
                .map(|array| Arc::new(array.with_data_type($data_type.clone())) as ArrayRef)
                .map_err(|e| e.to_string())
        })
    }};
}

/// Booleans, numbers and times built as typed arrays directly: every bit pattern is a valid
/// value, so the sizes (computed from the length), the alignment and the null count (counted
/// here) are all there is to check, with either [`Validation`]. `None` for other types.
fn import_fixed_width(
    data_type: &DataType,
    validity: &Option<Buffer>,
    values: &Buffer,
    offset: usize,
    len: usize,
) -> Option<Result<ArrayRef, String>> {
    let nulls = || {
        validity.clone().map(|validity| NullBuffer::new(BooleanBuffer::new(validity, offset, len))).filter(|n| n.null_count() > 0)
    };
    downcast_primitive! {
        data_type => (primitive_array, data_type, values, (nulls()), offset, len),
        DataType::Boolean => Some(Ok(Arc::new(BooleanArray::new(BooleanBuffer::new(values.clone(), offset, len), nulls())))),
        _ => None,
    }
}

/// Imports `array` (its schema was compared with `data_type` already) as one column.
///
/// # Safety
/// `array` follows the C Data Interface (or is released).
pub unsafe fn import_array(array: FFI_ArrowArray, data_type: &DataType, validation: Validation) -> Result<ArrayRef, String> {
    if array.is_released() {
        return Err("the array is missing (released)".into());
    }
    match unsafe { flat_lengths(&array, data_type, array.length) } {
        Some(lengths) => {
            let owner = Arc::new(array);
            unsafe { import_flat(&owner, &owner, data_type, lengths, validation) }
        }
        None => Ok(make_array(unsafe { import_with_arrow(array, data_type.clone(), validation) }?)),
    }
}

/// arrow-rs's importer, for what the fast path does not read.
///
/// # Safety
/// `array` follows the C Data Interface.
unsafe fn import_with_arrow(array: FFI_ArrowArray, data_type: DataType, validation: Validation) -> Result<ArrayData, String> {
    let data = unsafe { from_ffi_and_data_type(array, data_type) }.map_err(|e| e.to_string())?;
    if validation == Validation::Full {
        data.validate_full().map_err(|e| e.to_string())?;
    }
    Ok(data)
}

/// Imports a struct array whose children are `fields` (its schema was compared with them
/// already) as its columns and its row count.
///
/// # Safety
/// `array` follows the C Data Interface (or is released).
pub unsafe fn import_columns(array: FFI_ArrowArray, fields: &Fields, validation: Validation) -> Result<(Vec<ArrayRef>, usize), String> {
    if array.is_released() {
        return Err("the array is missing (released)".into());
    }
    let children = array.num_children();
    if children != fields.len() {
        return Err(format!("it has {children} child arrays, its schema {}", fields.len()));
    }
    let child = |index: usize| -> Option<&FFI_ArrowArray> {
        if array.children.is_null() { None } else { unsafe { (*array.children.add(index)).as_ref() } }
    };
    // The fast path reads the whole batch or none of it: a flat child it cannot read sends the
    // batch to arrow-rs's importer.
    let plain_parent = array.length >= 0 && array.offset == 0 && array.null_count == 0;
    let fast = plain_parent
        && fields.iter().enumerate().all(|(index, field)| {
            child(index).is_some_and(|child| unsafe { flat_lengths(child, field.data_type(), array.length) }.is_some())
        });
    if !fast {
        let data = unsafe { import_with_arrow(array, DataType::Struct(fields.clone()), validation) }?;
        let rows = data.len();
        let (_, columns, _) = StructArray::from(data).into_parts();
        return Ok((columns, rows));
    }
    let rows = array.length as usize;
    let owner = Arc::new(array);
    let columns = fields
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let child = unsafe { &**owner.children.add(index) };
            // Read again rather than kept from the check above: a few loads per column instead of
            // an allocation per call.
            let lengths = unsafe { flat_lengths(child, field.data_type(), owner.length) }.unwrap_or_default();
            unsafe { import_flat(&owner, child, field.data_type(), lengths, validation) }
                .map_err(|e| format!("column `{}`: {e}", field.name()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        BinaryArray, BooleanArray, Date32Array, FixedSizeBinaryArray, Float32Array, Int64Array, LargeStringArray, ListArray,
        StringArray,
    };
    use arrow_array::types::Int32Type;
    use arrow_schema::Field;

    fn fields_of(columns: &[ArrayRef]) -> Fields {
        columns.iter().enumerate().map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true)).collect()
    }

    fn round_trip(columns: Vec<ArrayRef>, rows: usize) -> Vec<ArrayRef> {
        let fields = fields_of(&columns);
        let exported = export_columns(&columns, rows);
        let (imported, imported_rows) = unsafe { import_columns(exported, &fields, Validation::Full) }.unwrap();
        assert_eq!(imported_rows, rows);
        imported
    }

    fn every_flat_kind() -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc"), Some(""), Some("é")])),
            Arc::new(Float32Array::from(vec![Some(1.5), Some(7.0), None, Some(0.0), Some(10.0)])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true), Some(false)])),
            Arc::new(Date32Array::from(vec![Some(20_000), None, None, Some(1), Some(-3)])),
            Arc::new(LargeStringArray::from(vec!["x", "yy", "", "zzz", "w"])),
            Arc::new(BinaryArray::from(vec![&b"\x00\x01"[..], b"", b"\xff", b"ab", b"c"])),
            Arc::new(FixedSizeBinaryArray::try_from_iter(["ab", "cd", "ef", "gh", "ij"].into_iter()).unwrap()),
        ]
    }

    #[test]
    fn flat_columns_come_back_equal() {
        let columns = every_flat_kind();
        let imported = round_trip(columns.clone(), 5);
        for (before, after) in columns.iter().zip(&imported) {
            assert_eq!(before.to_data(), after.to_data(), "{}", before.data_type());
        }
    }

    #[test]
    fn sliced_columns_keep_their_offsets_and_nulls() {
        // Slices give boolean and string columns an offset, and primitive columns a null bitmap
        // that starts inside its first byte (exported by arrow-rs then, which realigns it).
        let columns: Vec<ArrayRef> = every_flat_kind().iter().map(|c| c.slice(2, 3)).collect();
        let imported = round_trip(columns.clone(), 3);
        for (before, after) in columns.iter().zip(&imported) {
            assert_eq!(before.as_ref(), after.as_ref(), "{}", before.data_type());
        }
    }

    #[test]
    fn nested_columns_take_arrow_rs_path_both_ways() {
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
            Some(vec![]),
        ]));
        let columns = vec![list, Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef];
        let imported = round_trip(columns.clone(), 3);
        for (before, after) in columns.iter().zip(&imported) {
            assert_eq!(before.as_ref(), after.as_ref());
        }
    }

    #[test]
    fn no_columns_still_carry_the_row_count() {
        let (columns, rows) = unsafe { import_columns(export_columns(&[], 42), &Fields::empty(), Validation::Full) }.unwrap();
        assert!(columns.is_empty());
        assert_eq!(rows, 42);
    }

    #[test]
    fn a_moved_out_child_outlives_its_released_parent() {
        let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["keep", "me"])), Arc::new(Int64Array::from(vec![1, 2]))];
        let mut parent = export_columns(&columns, 2);
        drop(columns);
        let moved = unsafe { ptr::replace(*parent.children, FFI_ArrowArray::empty()) };
        drop(unsafe { FFI_ArrowArray::from_raw(&mut parent) });
        let column = unsafe { import_array(moved, &DataType::Utf8, Validation::Full) }.unwrap();
        assert_eq!(column.as_any().downcast_ref::<StringArray>().unwrap(), &StringArray::from(vec!["keep", "me"]));
    }

    #[test]
    fn schema_copies_read_like_the_original_and_outlive_it() {
        let data_type = DataType::Struct(
            vec![
                Field::new("is_approved", DataType::Boolean, false),
                Field::new("tags", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
            ]
            .into(),
        );
        let shared = SharedSchema::new(&data_type).unwrap();
        let mut copies: Vec<FFI_ArrowSchema> = (0..3).map(|_| shared.export()).collect();
        drop(shared);
        for copy in &copies {
            assert_eq!(DataType::try_from(copy).unwrap(), data_type);
            assert!(crate::abi::same_type(copy, &FFI_ArrowSchema::try_from(&data_type).unwrap()));
        }
        // Move a child out of one copy, release that copy, and read the child alone.
        let moved = unsafe { ptr::replace(*copies[0].children, FFI_ArrowSchema::empty()) };
        copies.remove(0);
        assert_eq!(DataType::try_from(&moved).unwrap(), DataType::Boolean);
        assert_eq!(moved.name(), Some("is_approved"));
    }

    #[test]
    fn bad_data_is_refused_not_read() {
        // A string column whose bytes are not UTF-8, built unchecked, as a faulty plugin might.
        let bytes = BinaryArray::from(vec![&b"ok"[..], b"\xff\xfe"]).into_data();
        let not_utf8 = unsafe { bytes.into_builder().data_type(DataType::Utf8).build_unchecked() };
        let exported = export_columns(&[make_array(not_utf8.clone())], 2);
        let fields: Fields = vec![Field::new("s", DataType::Utf8, true)].into();
        let error = unsafe { import_columns(exported, &fields, Validation::Full) }.unwrap_err();
        assert!(error.contains("column `s`") && error.to_lowercase().contains("utf8"), "{error}");
        // Layout validation trusts the values; it still reads the array safely.
        let (columns, _) = unsafe { import_columns(export_columns(&[make_array(not_utf8)], 2), &fields, Validation::Layout) }.unwrap();
        assert_eq!(columns[0].len(), 2);

        // A primitive buffer that is not aligned for its type (read as such, it would be undefined
        // behaviour; arrow-rs would panic).
        let misaligned = Buffer::from(vec![0u8; 9]).slice(1);
        let data = unsafe { ArrayData::new_unchecked(DataType::Float32, 2, None, None, 0, vec![misaligned], vec![]) };
        let error = unsafe { import_array(FFI_ArrowArray::new(&data), &DataType::Float32, Validation::Full) }.unwrap_err();
        assert!(error.contains("not aligned"), "{error}");

        // A child shorter than the struct goes through arrow-rs's importer, which refuses it.
        let mut short = export_columns(&[Arc::new(Int64Array::from(vec![1])) as ArrayRef], 1);
        short.length = 2;
        let fields: Fields = vec![Field::new("n", DataType::Int64, true)].into();
        assert!(unsafe { import_columns(short, &fields, Validation::Full) }.is_err());

        // A child count other than the schema's.
        let one: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let two = export_columns(&[one.clone(), one], 1);
        let error = unsafe { import_columns(two, &fields, Validation::Full) }.unwrap_err();
        assert!(error.contains("2 child arrays, its schema 1"), "{error}");
    }
}
