//! The generic bodies behind the symbols [`export_rule!`](crate::export_rule) exports. Each one
//! catches panics (a panic must never unwind across `extern "C"`) and turns every failure into a
//! status code plus a plugin-owned message.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, SchemaRef};

use crate::abi::{ABI_VERSION, STATUS_ERROR, STATUS_OK, STATUS_PANIC, same_type};
use crate::cdata::{SharedSchema, Validation, export_array, export_columns, import_columns};
use crate::{Context, Rule, check_output, input_schema, output_schema};

/// One instance: the rule, and the declared input and output types built once at create, so a
/// call only compares the engine's input schema with them instead of parsing it.
struct Instance<R> {
    rule: R,
    input_schema: SchemaRef,
    input_type: DataType,
    exported_input_type: FFI_ArrowSchema,
    output_schema: SchemaRef,
    /// The C Data Interface schemas of the outputs and of the verdicts, handed out as copies.
    output_type: SharedSchema,
    verdicts_type: SharedSchema,
}

pub fn abi_version() -> u32 {
    ABI_VERSION
}

fn c_string(text: String) -> *mut c_char {
    // An interior NUL would cut the message; replace it rather than lose the message.
    CString::new(text.replace('\0', " ")).map(CString::into_raw).unwrap_or(std::ptr::null_mut())
}

thread_local! {
    /// Set while this thread runs a rule's code on behalf of the engine.
    static IN_RULE: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic inside a rule happened, for its error message.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs rule code with panics caught. A panic inside it is not printed by the plugin's panic hook
/// (the engine reports the error once, with this message and location, and stops the run); a
/// panic anywhere else in the plugin still goes to the hook that was installed before.
fn guarded<T>(run: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_RULE.with(Cell::get) {
                let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
            } else {
                previous(info)
            }
        }));
    });
    let was = IN_RULE.with(|flag| flag.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(run));
    IN_RULE.with(|flag| flag.set(was));
    outcome
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_else(|| "a non-text panic".into()),
    };
    match PANIC_LOCATION.with(|slot| slot.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}

/// Writes `outcome` as the ABI reports it: `STATUS_OK` and the value, or an error status and
/// `*error`.
unsafe fn report<T>(outcome: std::thread::Result<Result<T, String>>, error: *mut *mut c_char, ok: impl FnOnce(T)) -> i32 {
    let (status, message) = match outcome {
        Ok(Ok(value)) => {
            ok(value);
            return STATUS_OK;
        }
        Ok(Err(message)) => (STATUS_ERROR, message),
        Err(panic) => (STATUS_PANIC, format!("panicked: {}", panic_message(panic))),
    };
    if !error.is_null() {
        unsafe { *error = c_string(message) };
    }
    status
}

pub fn describe<R: Rule>() -> *mut c_char {
    match catch_unwind(|| serde_json::to_string(&R::describe())) {
        Ok(Ok(json)) => c_string(json),
        _ => std::ptr::null_mut(),
    }
}

/// # Safety
/// `text` is null or was returned by this plugin and not freed yet.
pub unsafe fn free_string(text: *mut c_char) {
    if !text.is_null() {
        drop(unsafe { CString::from_raw(text) });
    }
}

unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    if data.is_null() || len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(data, len) } }
}

/// # Safety
/// The pointers follow [`crate::abi::CreateFn`].
pub unsafe fn create<R: Rule>(
    config: *const u8,
    config_len: usize,
    base_dir: *const u8,
    base_dir_len: usize,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    let outcome = guarded(|| {
        let config = unsafe { bytes(config, config_len) };
        let base_dir = String::from_utf8_lossy(unsafe { bytes(base_dir, base_dir_len) }).into_owned();
        let mut rule: R = serde_json::from_slice(config).map_err(|e| format!("config: {e}"))?;
        rule.prepare(&Context { base_dir: PathBuf::from(base_dir) })?;
        let description = R::describe();
        let input_schema = input_schema(&description)?;
        let input_type = DataType::Struct(input_schema.fields().clone());
        let exported_input_type =
            FFI_ArrowSchema::try_from(&input_type).map_err(|e| format!("exporting the declared input type: {e}"))?;
        let output_schema = output_schema(&description)?;
        let output_type = SharedSchema::new(&DataType::Struct(output_schema.fields().clone()))
            .map_err(|e| format!("exporting the declared output type: {e}"))?;
        let verdicts_type = SharedSchema::new(&DataType::Utf8).map_err(|e| format!("exporting the verdicts type: {e}"))?;
        Ok(Box::new(Instance { rule, input_schema, input_type, exported_input_type, output_schema, output_type, verdicts_type }))
    });
    unsafe { report(outcome, error, |created| *instance = Box::into_raw(created).cast::<c_void>()) }
}

/// # Safety
/// The pointers follow [`crate::abi::ApplyFn`]; `instance` came from [`create`] with the same `R`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn apply<R: Rule>(
    instance: *mut c_void,
    input: *mut FFI_ArrowArray,
    input_schema: *const FFI_ArrowSchema,
    output: *mut FFI_ArrowArray,
    output_schema: *mut FFI_ArrowSchema,
    verdicts: *mut FFI_ArrowArray,
    verdicts_schema: *mut FFI_ArrowSchema,
    error: *mut *mut c_char,
) -> i32 {
    let outcome = guarded(|| {
        if instance.is_null() || input.is_null() || input_schema.is_null() || output.is_null() || output_schema.is_null() {
            return Err("apply was called with a null pointer".to_string());
        }
        let instance = unsafe { &*instance.cast::<Instance<R>>() };
        if !same_type(unsafe { &*input_schema }, &instance.exported_input_type) {
            return Err(format!("the input batch does not have the declared input columns {}", instance.input_type));
        }
        // Move the input out of the engine's struct: from here its buffers are released when the
        // last array that uses them is dropped, through the engine's own release callback. The
        // engine validated its batch, so only the layout is checked here.
        let array = unsafe { std::ptr::replace(input, FFI_ArrowArray::empty()) };
        let (columns, rows) = unsafe { import_columns(array, instance.input_schema.fields(), Validation::Layout) }
            .map_err(|e| format!("importing the input batch: {e}"))?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(instance.input_schema.clone(), columns, &options)
            .map_err(|e| format!("importing the input batch: {e}"))?;
        let applied = instance.rule.apply(&batch)?;
        check_output(&instance.output_schema, rows, &applied)?;
        let exported = export_columns(&applied.columns, rows);
        let exported = (exported, instance.output_type.export());
        let verdicts = applied.verdicts.map(|array| (export_array(&(Arc::new(array) as ArrayRef)), instance.verdicts_type.export()));
        Ok((exported, verdicts))
    });
    unsafe {
        report(outcome, error, |((array, schema), verdict)| {
            std::ptr::write(output, array);
            std::ptr::write(output_schema, schema);
            if let (Some((array, schema)), false) = (verdict, verdicts.is_null() || verdicts_schema.is_null()) {
                std::ptr::write(verdicts, array);
                std::ptr::write(verdicts_schema, schema);
            }
        })
    }
}

/// # Safety
/// `instance` is null or came from [`create`] with the same `R` and is not used again.
pub unsafe fn destroy<R: Rule>(instance: *mut c_void) {
    if !instance.is_null() {
        // Dropping a rule's state may run user code; keep a panic inside the plugin.
        let _ = guarded(|| drop(unsafe { Box::from_raw(instance.cast::<Instance<R>>()) }));
    }
}

/// Exports `$rule` (a type implementing [`Rule`](crate::Rule)) as a ratings-flow plugin: the six
/// `extern "C"` symbols of [`abi`](crate::abi). Use it once per `cdylib` crate.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn ratings_flow_abi_version() -> u32 {
            $crate::export::abi_version()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn ratings_flow_describe() -> *mut ::std::ffi::c_char {
            $crate::export::describe::<$rule>()
        }

        /// # Safety
        /// See `ratings_plugin_sdk::abi::CreateFn`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn ratings_flow_create(
            config: *const u8,
            config_len: usize,
            base_dir: *const u8,
            base_dir_len: usize,
            instance: *mut *mut ::std::ffi::c_void,
            error: *mut *mut ::std::ffi::c_char,
        ) -> i32 {
            unsafe { $crate::export::create::<$rule>(config, config_len, base_dir, base_dir_len, instance, error) }
        }

        /// # Safety
        /// See `ratings_plugin_sdk::abi::ApplyFn`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn ratings_flow_apply(
            instance: *mut ::std::ffi::c_void,
            input: *mut $crate::abi::FFI_ArrowArray,
            input_schema: *const $crate::abi::FFI_ArrowSchema,
            output: *mut $crate::abi::FFI_ArrowArray,
            output_schema: *mut $crate::abi::FFI_ArrowSchema,
            verdicts: *mut $crate::abi::FFI_ArrowArray,
            verdicts_schema: *mut $crate::abi::FFI_ArrowSchema,
            error: *mut *mut ::std::ffi::c_char,
        ) -> i32 {
            unsafe {
                $crate::export::apply::<$rule>(
                    instance,
                    input,
                    input_schema,
                    output,
                    output_schema,
                    verdicts,
                    verdicts_schema,
                    error,
                )
            }
        }

        /// # Safety
        /// See `ratings_plugin_sdk::abi::DestroyFn`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn ratings_flow_destroy(instance: *mut ::std::ffi::c_void) {
            unsafe { $crate::export::destroy::<$rule>(instance) }
        }

        /// # Safety
        /// See `ratings_plugin_sdk::abi::FreeStringFn`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn ratings_flow_free_string(text: *mut ::std::ffi::c_char) {
            unsafe { $crate::export::free_string(text) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Description;
    use arrow_array::{Array, Float32Array};
    use std::sync::Arc;

    #[derive(serde::Deserialize)]
    struct Panics {}

    impl Rule for Panics {
        fn describe() -> Description {
            Description::new("panics", "0").input("rating", arrow_schema::DataType::Float32)
        }
        fn apply(&self, _batch: &RecordBatch) -> Result<crate::Applied, String> {
            panic!("boom")
        }
    }

    #[test]
    fn a_panic_comes_back_as_an_error_status() {
        let batch = RecordBatch::try_from_iter([("rating", Arc::new(Float32Array::from(vec![1.0])) as _)]).unwrap();
        let error = crate::testing::apply::<Panics>("{}", &batch).unwrap_err();
        assert!(error.contains("panicked: boom"), "{error}");
        assert!(Array::len(batch.column(0)) == 1);
    }

    #[test]
    fn an_input_that_is_not_the_declared_one_is_refused() {
        let batch = RecordBatch::try_from_iter([("score", Arc::new(Float32Array::from(vec![1.0])) as _)]).unwrap();
        let error = crate::testing::apply::<Panics>("{}", &batch).unwrap_err();
        assert!(error.contains("does not have the declared input columns"), "{error}");
    }
}
