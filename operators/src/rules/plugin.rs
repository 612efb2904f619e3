//! Loading a rule plugin (`.so`) and calling it over the C ABI of [`ratings_plugin_sdk::abi`].
//!
//! Loading checks, in this order, and fails with one line naming the plugin and the problem: the
//! file exists; it is a loadable shared library; it exports `ratings_flow_abi_version`; that
//! version is the engine's; every other symbol is there; its description parses and names Arrow
//! types; an instance can be created from the graph's config. Column checks against the chain
//! happen in [`super::chain`].
//!
//! Memory across the boundary (the Arrow C Data Interface's rules): the engine exports the input
//! batch into structs it owns; the plugin moves the array out or leaves it, and whatever is left
//! is released by the engine after the call. The plugin fills the output structs; the engine
//! imports them (taking ownership) and their buffers go back to the plugin's allocator through
//! the plugin's release callbacks when the last engine array using them is dropped. Strings the
//! plugin returns (description, errors) are copied and handed back to `ratings_flow_free_string`.
//! Every buffer a plugin exported is dropped before its library is unloaded: instances hold the
//! library, and no column the plugin produced outlives the rules stage's call.

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Fields};
use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use ratings_plugin_sdk::Description;
use ratings_plugin_sdk::abi::{self, ApplyFn, CreateFn, DescribeFn, DestroyFn, FreeStringFn, same_type};
use ratings_plugin_sdk::cdata::{Validation, export_columns, import_array, import_columns};

use crate::error::{Error, Result};

/// A plugin as the graph file names it.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// How errors and the rejected table name the plugin (the graph's `name`, else the
    /// description's).
    pub label: Option<String>,
    pub path: PathBuf,
    /// The graph's config table, as JSON.
    pub config: serde_json::Value,
    /// The graph file's folder: relative paths in the config start there.
    pub base_dir: PathBuf,
}

/// A loaded, checked plugin library.
pub struct Plugin {
    pub label: String,
    pub path: PathBuf,
    pub description: Description,
    pub inputs: Vec<(String, DataType)>,
    pub outputs: Vec<(String, DataType)>,
    config: String,
    base_dir: String,
    create: CreateFn,
    apply: ApplyFn,
    destroy: DestroyFn,
    free_string: FreeStringFn,
    /// Last field: dropped after everything above that points into it.
    _library: libloading::Library,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("label", &self.label).field("path", &self.path).finish()
    }
}

fn symbol<T: Copy>(library: &libloading::Library, name: &str) -> std::result::Result<T, String> {
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|symbol| *symbol)
        .map_err(|_| format!("does not export `{name}` (ABI version {} needs {})", abi::ABI_VERSION, abi::SYMBOLS.join(", ")))
}

/// Copies a plugin-owned string and gives it back to the plugin.
fn take_string(text: *mut c_char, free_string: FreeStringFn) -> Option<String> {
    if text.is_null() {
        return None;
    }
    let copy = unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned();
    unsafe { free_string(text) };
    Some(copy)
}

fn parse_columns(columns: &[ratings_plugin_sdk::ColumnSpec]) -> std::result::Result<Vec<(String, DataType)>, String> {
    columns.iter().map(|c| Ok((c.name.clone(), c.arrow_type()?))).collect()
}

impl Plugin {
    pub fn load(spec: &PluginSpec) -> Result<Arc<Plugin>> {
        let path = &spec.path;
        let label = spec.label.clone().unwrap_or_else(|| file_label(path));
        let named = |problem: String| plugin_error(&label, path, problem);
        if !path.is_file() {
            return Err(named("file not found (build the plugins with `make plugins`)".into()));
        }
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| named(format!("not a loadable shared library: {e}")))?;
        let version: abi::AbiVersionFn = symbol(&library, abi::SYMBOL_ABI_VERSION)
            .map_err(|_| named(format!("not a ratings-flow plugin: it does not export `{}`", abi::SYMBOL_ABI_VERSION)))?;
        let version = unsafe { version() };
        if version != abi::ABI_VERSION {
            return Err(named(format!(
                "built for plugin ABI version {version}, this engine speaks version {}: rebuild it against this engine's ratings-plugin-sdk",
                abi::ABI_VERSION
            )));
        }
        let describe: DescribeFn = symbol(&library, abi::SYMBOL_DESCRIBE).map_err(named)?;
        let create: CreateFn = symbol(&library, abi::SYMBOL_CREATE).map_err(named)?;
        let apply: ApplyFn = symbol(&library, abi::SYMBOL_APPLY).map_err(named)?;
        let destroy: DestroyFn = symbol(&library, abi::SYMBOL_DESTROY).map_err(named)?;
        let free_string: FreeStringFn = symbol(&library, abi::SYMBOL_FREE_STRING).map_err(named)?;
        let json = take_string(unsafe { describe() }, free_string)
            .ok_or_else(|| named("its description is empty (did describe() panic?)".into()))?;
        let description: Description =
            serde_json::from_str(&json).map_err(|e| named(format!("its description is not valid: {e}: {json}")))?;
        let inputs = parse_columns(&description.inputs).map_err(named)?;
        let outputs = parse_columns(&description.outputs).map_err(named)?;
        let plugin = Plugin {
            label: spec.label.clone().unwrap_or_else(|| description.name.clone()),
            path: path.clone(),
            description,
            inputs,
            outputs,
            config: spec.config.to_string(),
            base_dir: spec.base_dir.display().to_string(),
            create,
            apply,
            destroy,
            free_string,
            _library: library,
        };
        let plugin = Arc::new(plugin);
        // Creating one instance now reports a bad config at start, before any worker runs.
        drop(PluginInstance::new(&plugin)?);
        Ok(plugin)
    }

    /// A problem with this plugin, as the one line users see: `plugin `NAME` (PATH): problem`.
    pub fn error(&self, problem: String) -> Error {
        plugin_error(&self.label, &self.path, problem)
    }
}

fn plugin_error(label: &str, path: &Path, problem: String) -> Error {
    Error::User(format!("plugin `{label}` ({}): {problem}", path.display()))
}

fn file_label(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().trim_start_matches("lib").to_string()).unwrap_or_default()
}

/// The columns of one side of a call and their C Data Interface schema (a struct of them),
/// exported once: a call passes the input's by reference (the plugin only reads it) and compares
/// what the plugin returns with the expected ones in place ([`same_type`]) instead of parsing the
/// plugin's schema into an arrow type.
struct Exported {
    fields: Fields,
    schema: FFI_ArrowSchema,
}

impl Exported {
    fn of_columns(columns: &[(String, DataType)]) -> std::result::Result<Exported, String> {
        let fields: Fields = columns.iter().map(|(name, data_type)| Field::new(name, data_type.clone(), true)).collect();
        let schema = FFI_ArrowSchema::try_from(DataType::Struct(fields.clone())).map_err(|e| e.to_string())?;
        Ok(Exported { fields, schema })
    }
}

/// One instance of a plugin, used by one worker thread at a time.
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    handle: NonNull<c_void>,
    input: Exported,
    output: Exported,
    verdicts_schema: FFI_ArrowSchema,
}

// The ABI lets an instance move between threads; it is never used by two at once (`&mut self`).
unsafe impl Send for PluginInstance {}

impl PluginInstance {
    pub fn new(plugin: &Arc<Plugin>) -> Result<PluginInstance> {
        let exported = |columns: std::result::Result<Exported, String>| {
            columns.map_err(|e| Error::Internal(format!("exporting the column types of plugin `{}`: {e}", plugin.label)))
        };
        let (input, output) = (exported(Exported::of_columns(&plugin.inputs))?, exported(Exported::of_columns(&plugin.outputs))?);
        let verdicts_schema = FFI_ArrowSchema::try_from(DataType::Utf8)
            .map_err(|e| Error::Internal(format!("exporting the verdicts type of plugin `{}`: {e}", plugin.label)))?;
        let mut handle: *mut c_void = ptr::null_mut();
        let mut error: *mut c_char = ptr::null_mut();
        let status = unsafe {
            (plugin.create)(
                plugin.config.as_ptr(),
                plugin.config.len(),
                plugin.base_dir.as_ptr(),
                plugin.base_dir.len(),
                &mut handle,
                &mut error,
            )
        };
        let message = take_string(error, plugin.free_string);
        match (status, NonNull::new(handle)) {
            (abi::STATUS_OK, Some(handle)) => Ok(PluginInstance { plugin: plugin.clone(), handle, input, output, verdicts_schema }),
            (abi::STATUS_OK, None) => Err(plugin.error("create reported success but returned no instance".into())),
            (abi::STATUS_PANIC, _) => Err(plugin.error(format!("create {}", message.unwrap_or_else(|| "panicked".into())))),
            _ => Err(plugin.error(format!("invalid config: {}", message.unwrap_or_else(|| "no message".into())))),
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Calls the rule on `columns` (the declared inputs, in order, `rows` long). Returns the
    /// declared outputs in order and, when the plugin gave them, the verdicts, all checked
    /// against the declaration.
    pub fn apply(&mut self, columns: Vec<ArrayRef>, rows: usize) -> Result<(Vec<ArrayRef>, Option<StringArray>)> {
        let plugin = &*self.plugin;
        if let Some(column) = columns.iter().find(|column| column.len() != rows) {
            return Err(Error::Internal(format!(
                "the input of plugin `{}` has a column of {} rows in a batch of {rows}",
                plugin.label,
                column.len()
            )));
        }
        let mut input = export_columns(&columns, rows);
        let (mut output, mut output_schema) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let (mut verdicts, mut verdicts_schema) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let mut error: *mut c_char = ptr::null_mut();
        let status = unsafe {
            (plugin.apply)(
                self.handle.as_ptr(),
                &mut input,
                &self.input.schema,
                &mut output,
                &mut output_schema,
                &mut verdicts,
                &mut verdicts_schema,
                &mut error,
            )
        };
        let message = take_string(error, plugin.free_string);
        match status {
            abi::STATUS_OK => {}
            abi::STATUS_PANIC => {
                return Err(plugin.error(message.unwrap_or_else(|| "panicked".into())));
            }
            _ => return Err(plugin.error(format!("apply failed: {}", message.unwrap_or_else(|| "no message".into())))),
        }
        if !same_type(&output_schema, &self.output.schema) {
            return Err(plugin.error(format!(
                "returned columns {}, its description declares {}",
                schema_text(&output_schema),
                columns_text(&DataType::Struct(self.output.fields.clone()))
            )));
        }
        // Imported fully validated (offsets, UTF-8, lengths, child counts): a plugin's bug must
        // become an error here, not undefined behaviour later.
        let (outputs, output_rows) = unsafe { import_columns(output, &self.output.fields, Validation::Full) }
            .map_err(|e| plugin.error(format!("returned an unreadable batch: {e}")))?;
        if output_rows != rows {
            return Err(plugin.error(format!("returned {output_rows} rows for an input of {rows}")));
        }
        let verdicts = if verdicts.is_released() {
            None
        } else if !same_type(&verdicts_schema, &self.verdicts_schema) {
            return Err(plugin.error(format!("returned verdicts of type {}; expected Utf8", schema_text(&verdicts_schema))));
        } else {
            let verdicts = unsafe { import_array(verdicts, &DataType::Utf8, Validation::Full) }
                .map_err(|e| plugin.error(format!("returned unreadable verdicts: {e}")))?;
            if verdicts.len() != rows {
                return Err(plugin.error(format!("returned {} verdicts for an input of {rows} rows", verdicts.len())));
            }
            Some(StringArray::from(verdicts.to_data()))
        };
        Ok((outputs, verdicts))
    }
}

/// The type a plugin's schema describes, for error messages.
fn schema_text(schema: &FFI_ArrowSchema) -> String {
    if schema.release.is_none() {
        return "none (the schema is missing)".into();
    }
    // Parsing panics on some malformed structs; the message then says so.
    match std::panic::catch_unwind(|| DataType::try_from(schema)) {
        Ok(Ok(data_type)) => columns_text(&data_type),
        Ok(Err(e)) => format!("an unreadable schema ({e})"),
        Err(_) => "a malformed schema".into(),
    }
}

fn columns_text(data_type: &DataType) -> String {
    match data_type {
        DataType::Struct(fields) => {
            let columns: Vec<String> = fields.iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
            format!("[{}]", columns.join(", "))
        }
        other => format!("a {other} array instead of a struct of columns"),
    }
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        unsafe { (self.plugin.destroy)(self.handle.as_ptr()) };
    }
}
