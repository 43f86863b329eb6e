//! Loom from Rust through its C ABI (loom.h, docs/capi.md): a 2-8-1 network for XOR built from JSON,
//! its outputs before and after a short training, and the SHA-256 fingerprint of the trained weights.
//!
//! Build and run (no build script, no crates: the linker finds libloom.so through RUSTFLAGS, and the
//! rpath lets the program find it at run time):
//!
//!     loom capi build --out /path/to/loom-capi
//!     RUSTFLAGS="-L /path/to/loom-capi -C link-arg=-Wl,-rpath,/path/to/loom-capi" \
//!         CARGO_TARGET_DIR=/tmp/loom-rust cargo run --offline --release
//!
//! In deterministic mode (the default) every number printed equals what the same calls give in
//! Python (tests/capi/test_capi_examples.py checks them).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::process::ExitCode;

/// loom.h's opaque loom_network.
#[repr(C)]
pub struct LoomNetwork {
    _private: [u8; 0],
}

const LOOM_OK: c_int = 0;
const LOOM_FLOAT32: c_int = 1;

#[link(name = "loom")]
extern "C" {
    fn loom_version() -> *const c_char;
    fn loom_last_error() -> *const c_char;
    fn loom_free(p: *mut c_void);
    fn loom_live_handles(count: *mut usize) -> c_int;
    fn loom_network_from_json(json: *const c_char, out: *mut *mut LoomNetwork) -> c_int;
    fn loom_network_free(net: *mut LoomNetwork) -> c_int;
    fn loom_network_set_training(net: *mut LoomNetwork, training: c_int) -> c_int;
    fn loom_network_output_shape(
        net: *mut LoomNetwork,
        dims: *mut i64,
        capacity: c_int,
        ndim: *mut c_int,
    ) -> c_int;
    fn loom_network_fingerprint(net: *mut LoomNetwork, hex65: *mut c_char) -> c_int;
    fn loom_forward(
        net: *mut LoomNetwork,
        input: *const f32,
        shape: *const i64,
        ndim: c_int,
        output: *mut f32,
        output_capacity: usize,
    ) -> c_int;
    fn loom_train(
        net: *mut LoomNetwork,
        spec_json: *const c_char,
        x: *const f32,
        x_shape: *const i64,
        x_ndim: c_int,
        y: *const c_void,
        y_dtype: c_int,
        y_shape: *const i64,
        y_ndim: c_int,
        history_json: *mut *mut c_char,
    ) -> c_int;
}

/// A failed call: its status code (LOOM_ERR_*) and loom_last_error()'s message.
#[derive(Debug)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status {}: {}", self.code, self.message)
    }
}

fn check(status: c_int) -> Result<(), Error> {
    if status == LOOM_OK {
        return Ok(());
    }
    // SAFETY: loom_last_error never returns NULL; the text stays valid until this thread's next call.
    let message = unsafe { CStr::from_ptr(loom_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(Error {
        code: status,
        message,
    })
}

fn c_string(text: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error {
        code: 1,
        message: "a string holds a NUL byte".into(),
    })
}

/// Owns one loom_network; frees it on drop.
pub struct Network {
    ptr: *mut LoomNetwork,
}

impl Network {
    pub fn from_json(json: &str) -> Result<Network, Error> {
        let json = c_string(json)?;
        let mut ptr = std::ptr::null_mut();
        check(unsafe { loom_network_from_json(json.as_ptr(), &mut ptr) })?;
        Ok(Network { ptr })
    }

    pub fn output_shape(&self) -> Result<Vec<i64>, Error> {
        let mut dims = [0i64; 8];
        let mut ndim: c_int = 0;
        check(unsafe { loom_network_output_shape(self.ptr, dims.as_mut_ptr(), 8, &mut ndim) })?;
        Ok(dims[..ndim as usize].to_vec())
    }

    pub fn set_training(&mut self, training: bool) -> Result<(), Error> {
        check(unsafe { loom_network_set_training(self.ptr, training as c_int) })
    }

    /// Outputs for a batch `x` of `shape` (batch first), [batch, *output shape] flattened.
    pub fn forward(&mut self, x: &[f32], shape: &[i64]) -> Result<Vec<f32>, Error> {
        let per_sample: i64 = self.output_shape()?.iter().product();
        let mut out = vec![0f32; (shape[0] * per_sample) as usize];
        check(unsafe {
            loom_forward(
                self.ptr,
                x.as_ptr(),
                shape.as_ptr(),
                shape.len() as c_int,
                out.as_mut_ptr(),
                out.len(),
            )
        })?;
        Ok(out)
    }

    /// loom.train with a JSON spec on float32 inputs and float32 targets; the history as JSON.
    pub fn train(
        &mut self,
        spec: &str,
        x: &[f32],
        x_shape: &[i64],
        y: &[f32],
        y_shape: &[i64],
    ) -> Result<String, Error> {
        let spec = c_string(spec)?;
        let mut history: *mut c_char = std::ptr::null_mut();
        check(unsafe {
            loom_train(
                self.ptr,
                spec.as_ptr(),
                x.as_ptr(),
                x_shape.as_ptr(),
                x_shape.len() as c_int,
                y.as_ptr() as *const c_void,
                LOOM_FLOAT32,
                y_shape.as_ptr(),
                y_shape.len() as c_int,
                &mut history,
            )
        })?;
        // SAFETY: on success the library set history to a NUL-terminated string it allocated.
        let text = unsafe { CStr::from_ptr(history) }
            .to_string_lossy()
            .into_owned();
        unsafe { loom_free(history as *mut c_void) };
        Ok(text)
    }

    /// SHA-256 of every parameter and buffer, 64 hex digits.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let mut hex = [0 as c_char; 65];
        check(unsafe { loom_network_fingerprint(self.ptr, hex.as_mut_ptr()) })?;
        Ok(unsafe { CStr::from_ptr(hex.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // SAFETY: ptr came from loom_network_from_json and is freed once, here.
        unsafe { loom_network_free(self.ptr) };
    }
}

fn live_handles() -> Result<usize, Error> {
    let mut n = 0usize;
    check(unsafe { loom_live_handles(&mut n) })?;
    Ok(n)
}

fn show(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| format!("{:.8e}", v))
        .collect::<Vec<_>>()
        .join(" ")
}

const CONFIG: &str = r#"{"loom": 1, "name": "xor", "seed": 1, "input": {"shape": [2]},
  "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
             {"type": "dense", "units": 1, "activation": "sigmoid"}]}"#;
const SPEC: &str = r#"{"loss": "mse", "optimizer": {"type": "adam", "lr": 0.05}, "epochs": 300,
  "batch_size": 4, "seed": 0}"#;

fn run() -> Result<(), Error> {
    let version = unsafe { CStr::from_ptr(loom_version()) }
        .to_string_lossy()
        .into_owned();
    println!("loom {}", version);
    let x: [f32; 8] = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
    let y: [f32; 4] = [0.0, 1.0, 1.0, 0.0];
    {
        let mut net = Network::from_json(CONFIG)?;
        println!("output shape {:?}", net.output_shape()?);
        println!("before {}", show(&net.forward(&x, &[4, 2])?));
        let history = net.train(SPEC, &x, &[4, 2], &y, &[4, 1])?;
        println!("trained {} bytes of history", history.len());
        net.set_training(false)?;
        println!("after {}", show(&net.forward(&x, &[4, 2])?));
        println!("fingerprint {}", net.fingerprint()?);
        match Network::from_json("{\"loom\": 1}") {
            Err(e) => println!("bad config: status {}", e.code),
            Ok(_) => println!("bad config: accepted"),
        }
    } // net dropped here: loom_network_free
    println!("live handles {}", live_handles()?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loom error: {}", e);
            ExitCode::FAILURE
        }
    }
}
