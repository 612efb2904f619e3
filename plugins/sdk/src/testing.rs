//! Test a rule the way the engine calls it, without the engine: [`apply`] runs create → apply →
//! destroy through the same exported entry points and Arrow C Data Interface round trip a loaded
//! plugin goes through, in-process.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, RecordBatch, StringArray, StructArray};

use crate::{Rule, export};

unsafe fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "no message".into();
    }
    let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { export::free_string(error) };
    text
}

/// Creates `R` from `config` (JSON; relative paths resolve against the current folder), applies it
/// to `batch` (the declared input columns) and returns the output columns and the verdicts.
pub fn apply<R: Rule>(config: &str, batch: &RecordBatch) -> Result<(RecordBatch, Option<StringArray>), String> {
    let base_dir = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    let mut instance: *mut c_void = ptr::null_mut();
    let mut error: *mut c_char = ptr::null_mut();
    let status = unsafe {
        export::create::<R>(config.as_ptr(), config.len(), base_dir.as_ptr(), base_dir.len(), &mut instance, &mut error)
    };
    if status != crate::abi::STATUS_OK {
        return Err(unsafe { take_error(error) });
    }
    let result = (|| {
        let (mut input, input_schema) =
            to_ffi(&StructArray::from(batch.clone()).into_data()).map_err(|e| e.to_string())?;
        let (mut output, mut output_schema) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let (mut verdicts, mut verdicts_schema) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let status = unsafe {
            export::apply::<R>(
                instance,
                &mut input,
                &input_schema,
                &mut output,
                &mut output_schema,
                &mut verdicts,
                &mut verdicts_schema,
                &mut error,
            )
        };
        if status != crate::abi::STATUS_OK {
            return Err(unsafe { take_error(error) });
        }
        let columns = unsafe { from_ffi(output, &output_schema) }.map_err(|e| e.to_string())?;
        let verdicts = if verdicts.is_released() {
            None
        } else {
            let data = unsafe { from_ffi(verdicts, &verdicts_schema) }.map_err(|e| e.to_string())?;
            Some(StringArray::from(data))
        };
        let columns = StructArray::from(columns);
        debug_assert_eq!(columns.len(), batch.num_rows());
        Ok((RecordBatch::from(columns), verdicts))
    })();
    unsafe { export::destroy::<R>(instance) };
    result
}
