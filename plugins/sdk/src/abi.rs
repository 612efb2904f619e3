//! The C ABI between the engine and a rule plugin (see `plugins/ABI.md` for the full contract).
//!
//! Only `#[repr(C)]` types and `extern "C"` functions cross the boundary: a plugin built with
//! another compiler version, or against other versions of arrow and serde, still loads. Batches
//! cross as Arrow C Data Interface structs ([`FFI_ArrowArray`] + [`FFI_ArrowSchema`]).

use std::ffi::{CStr, c_char, c_void};

pub use arrow_data::ffi::FFI_ArrowArray;
pub use arrow_schema::ffi::FFI_ArrowSchema;

/// The version of this ABI. The engine reads it before touching any other symbol and refuses a
/// plugin that reports another one.
pub const ABI_VERSION: u32 = 1;

/// Status codes returned by [`CreateFn`] and [`ApplyFn`].
pub const STATUS_OK: i32 = 0;
/// The rule refused (bad config, bad batch); the error string says why.
pub const STATUS_ERROR: i32 = 1;
/// The rule panicked; the panic was caught inside the plugin and its message is the error string.
pub const STATUS_PANIC: i32 = 2;

/// `u32 ratings_flow_abi_version(void)`
pub const SYMBOL_ABI_VERSION: &str = "ratings_flow_abi_version";
/// `char *ratings_flow_describe(void)`: the description as UTF-8 JSON, freed with
/// `ratings_flow_free_string`.
pub const SYMBOL_DESCRIBE: &str = "ratings_flow_describe";
/// `i32 ratings_flow_create(config, config_len, base_dir, base_dir_len, *instance, *error)`
pub const SYMBOL_CREATE: &str = "ratings_flow_create";
/// `i32 ratings_flow_apply(instance, input, input_schema, output, output_schema, verdicts,
/// verdicts_schema, *error)`
pub const SYMBOL_APPLY: &str = "ratings_flow_apply";
/// `void ratings_flow_destroy(instance)`
pub const SYMBOL_DESTROY: &str = "ratings_flow_destroy";
/// `void ratings_flow_free_string(char *)`
pub const SYMBOL_FREE_STRING: &str = "ratings_flow_free_string";

/// Every symbol a plugin exports, in the order the engine resolves them.
pub const SYMBOLS: [&str; 6] =
    [SYMBOL_ABI_VERSION, SYMBOL_DESCRIBE, SYMBOL_CREATE, SYMBOL_APPLY, SYMBOL_DESTROY, SYMBOL_FREE_STRING];

pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
pub type DescribeFn = unsafe extern "C" fn() -> *mut c_char;
/// `config`: UTF-8 JSON of the graph's config table. `base_dir`: UTF-8 path of the graph file's
/// folder, for resolving relative paths in the config. On `STATUS_OK`, `*instance` is set; else
/// `*error` is a plugin-owned string.
pub type CreateFn = unsafe extern "C" fn(
    config: *const u8,
    config_len: usize,
    base_dir: *const u8,
    base_dir_len: usize,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32;
/// `input`/`input_schema`: a struct array of the declared input columns, owned by the engine; the
/// plugin may move `input` out (leaving it released) and only reads `input_schema`. `output`,
/// `output_schema`, `verdicts`, `verdicts_schema`: released structs the plugin fills on success
/// (a struct array of the declared outputs; a UTF-8 array of reject reasons, or left released for
/// "keep every row"); the engine owns and releases them afterwards.
pub type ApplyFn = unsafe extern "C" fn(
    instance: *mut c_void,
    input: *mut FFI_ArrowArray,
    input_schema: *const FFI_ArrowSchema,
    output: *mut FFI_ArrowArray,
    output_schema: *mut FFI_ArrowSchema,
    verdicts: *mut FFI_ArrowArray,
    verdicts_schema: *mut FFI_ArrowSchema,
    error: *mut *mut c_char,
) -> i32;
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);
pub type FreeStringFn = unsafe extern "C" fn(text: *mut c_char);

/// Whether two C Data Interface schemas describe the same type: the same format strings, child
/// names and dictionaries, all the way down (nullability flags and metadata are not compared).
/// It compares the C strings in place, without building arrow types or checking UTF-8, so
/// checking a batch's schema on every call costs almost nothing. A schema that cannot be read
/// (null strings or children where there must be some) or a released one is never the same as
/// anything.
pub fn same_type(left: &FFI_ArrowSchema, right: &FFI_ArrowSchema) -> bool {
    fn same_text(left: *const c_char, right: *const c_char) -> bool {
        match (left.is_null(), right.is_null()) {
            (true, true) => true,
            // SAFETY: a non-null string of a schema is NUL-terminated (C Data Interface).
            (false, false) => unsafe { CStr::from_ptr(left) == CStr::from_ptr(right) },
            _ => false,
        }
    }
    fn children(schema: &FFI_ArrowSchema) -> Option<&[*mut FFI_ArrowSchema]> {
        match usize::try_from(schema.n_children) {
            Ok(0) => Some(&[]),
            Ok(count) if !schema.children.is_null() => Some(unsafe { std::slice::from_raw_parts(schema.children, count) }),
            _ => None,
        }
    }
    fn same(left: &FFI_ArrowSchema, right: &FFI_ArrowSchema) -> bool {
        if left.release.is_none() || right.release.is_none() || left.format.is_null() {
            return false;
        }
        let (Some(left_children), Some(right_children)) = (children(left), children(right)) else { return false };
        same_text(left.format, right.format)
            && same_text(left.name, right.name)
            && left_children.len() == right_children.len()
            && left_children.iter().zip(right_children).all(|(l, r)| match unsafe { (l.as_ref(), r.as_ref()) } {
                (Some(l), Some(r)) => same(l, r),
                _ => false,
            })
            && match unsafe { (left.dictionary.as_ref(), right.dictionary.as_ref()) } {
                (None, None) => true,
                (Some(l), Some(r)) => same(l, r),
                _ => false,
            }
    }
    same(left, right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    fn exported(columns: &[(&str, DataType)]) -> FFI_ArrowSchema {
        let fields: Vec<Field> = columns.iter().map(|(name, t)| Field::new(*name, t.clone(), true)).collect();
        FFI_ArrowSchema::try_from(DataType::Struct(fields.into())).unwrap()
    }

    #[test]
    fn same_type_compares_formats_and_names_recursively() {
        let declared = exported(&[("rating", DataType::Float32), ("user_id", DataType::Utf8)]);
        assert!(same_type(&declared, &exported(&[("rating", DataType::Float32), ("user_id", DataType::Utf8)])));
        assert!(!same_type(&declared, &exported(&[("rating", DataType::Float64), ("user_id", DataType::Utf8)])));
        assert!(!same_type(&declared, &exported(&[("score", DataType::Float32), ("user_id", DataType::Utf8)])));
        assert!(!same_type(&declared, &exported(&[("rating", DataType::Float32)])));
        assert!(!same_type(&declared, &FFI_ArrowSchema::try_from(DataType::Float32).unwrap()));
        assert!(!same_type(&declared, &FFI_ArrowSchema::empty()), "a released schema matches nothing");
    }
}
