//! ONNX models as jobs: a second runtime beside WebAssembly.
//!
//! A job is an ONNX model, one input tensor as `.npy` bytes and [`OnnxLimits`]; its result is
//! the model's **first output** as `.npy` bytes. Models run in [tract] (pure Rust, single
//! threaded here, no file or network access: external tensor data is refused because the model
//! is parsed from bytes, without a directory).
//!
//! **Compiled once.** [`OnnxEngine`] keeps up to [`ONNX_CACHE_CAPACITY`] optimized plans keyed
//! by the model's BLAKE3 hash (least recently used out). A miss compiles on its own thread (at
//! most [`MAX_ONNX_COMPILATIONS`] at once) within [`OnnxLimits::compile_time`]; a compilation
//! that outlives its job finishes in the background and fills the cache, as in
//! [`Sandbox`](crate::Sandbox). The model bytes are checked against `model_hash` before
//! compiling; a cache hit trusts the hash (it names the model the replicas agreed to run).
//!
//! **Checked before anything runs:** the model's and the input's sizes
//! ([`ExecError::TooLarge`]) before either is parsed; the `.npy` header (bounded, with a checked
//! element count and exactly as many data bytes as it announces); the input's dtype and shape
//! against the model's declared input ([`ExecError::InvalidTensor`], naming both); operators
//! tract does not implement ([`ExecError::UnsupportedOperator`]); and an estimate of the live
//! tensor memory from the model's shapes with the input's dimensions bound
//! ([`ExecError::MemoryLimit`]).
//!
//! **While it runs** (tract evaluates node by node on the calling thread), each step checks
//! the wall-clock deadline ([`ExecError::WallTime`]) and the bytes of the tensors alive after
//! it. A single operator is not interrupted, so the wall-time limit is enforced between
//! operators, and a tensor whose size depends on data (not on shapes) is counted when it has
//! been produced. Any panic inside tract is caught and reported as [`ExecError::InvalidModel`];
//! the engine keeps serving.
//!
//! **Verification** of replicas uses a [`Compare`] rule and [`canonicalize`]: CPU kernels
//! differ by instruction set, so outputs are compared through a rule (rounded floats, argmax,
//! top-k) rather than bit for bit; see [`Compare::default`] for the measured choice.

mod compare;
mod npy;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoTValue, SymbolValues, TDim, TValue, Tensor,
    TractError, TypedFact, TypedModel, TypedSimplePlan, tvec,
};
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::{EvalContext, SimplePlan};
use tract_onnx::tract_hir::infer::{GenericFactoid, InferenceModel};
use tract_onnx::tract_hir::ops::unimpl::UnimplementedOp;

pub use compare::{Compare, MAX_ROUND_DIGITS, canonicalize, perturb};
pub use npy::{Dtype, MAX_NPY_HEADER_BYTES, MAX_RANK};

use crate::ExecError;

/// Optimized plans an [`OnnxEngine`] keeps; the least recently used one goes beyond that.
pub const ONNX_CACHE_CAPACITY: usize = 16;

/// ONNX compilations that may run at once, each on its own thread.
pub const MAX_ONNX_COMPILATIONS: usize = 2;

/// Longest error detail kept from tract (its messages can carry whole node dumps).
const MAX_DETAIL: usize = 600;

/// Limits of one ONNX job. Sizes are checked before anything is parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnnxLimits {
    /// Largest model accepted, in bytes.
    pub max_model_bytes: usize,
    /// Largest input `.npy`, in bytes.
    pub max_input_bytes: usize,
    /// Largest output `.npy`, in bytes.
    pub max_output_bytes: usize,
    /// Most elements in any one tensor: the input, every intermediate and the output.
    pub max_elements: u64,
    /// Most bytes of tensors alive at once during the run (the model's own weights excluded;
    /// they are bounded by `max_model_bytes`), estimated before the run and counted during it.
    pub memory_bytes: u64,
    /// Wall-clock limit of the run (compilation excluded), checked between operators.
    pub wall_time: Duration,
    /// Wall-clock limit of compiling the model on a cache miss ([`ExecError::CompileTime`]).
    pub compile_time: Duration,
}

impl Default for OnnxLimits {
    /// A 64 MiB model, 16 MiB input and output, 16 Mi elements per tensor, 256 MiB of live
    /// tensors, 30 s of run time, 10 s of compile time.
    fn default() -> Self {
        Self {
            max_model_bytes: 64 * 1024 * 1024,
            max_input_bytes: 16 * 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            max_elements: 16 * 1024 * 1024,
            memory_bytes: 256 * 1024 * 1024,
            wall_time: Duration::from_secs(30),
            compile_time: crate::DEFAULT_COMPILE_TIME,
        }
    }
}

impl OnnxLimits {
    /// The limits of an ONNX job's spec: its model and input sizes (already bounded by the
    /// node's spec bounds), its memory and wall-time limits, `max_output_bytes`, and the
    /// defaults for the rest. Every replica derives the same limits from the signed spec, so a
    /// limit is a deterministic verdict.
    pub fn for_spec(spec: &agora_types::job::JobSpec, max_output_bytes: usize) -> Self {
        let defaults = Self::default();
        Self {
            max_model_bytes: usize::try_from(spec.module_size).unwrap_or(usize::MAX),
            max_input_bytes: usize::try_from(spec.input_size).unwrap_or(usize::MAX),
            max_output_bytes,
            memory_bytes: spec.limits.memory_bytes,
            wall_time: Duration::from_millis(spec.limits.wall_time_ms),
            ..defaults
        }
    }
}

/// One inference: a model, its hash, an input tensor and the limits.
#[derive(Clone, PartialEq, Eq)]
pub struct OnnxJob {
    /// The ONNX model (protobuf bytes).
    pub model: Arc<[u8]>,
    /// BLAKE3 hash of `model`: the cache key, checked against the bytes before compiling.
    pub model_hash: [u8; 32],
    /// The input tensor, as `.npy` bytes.
    pub input: Vec<u8>,
    /// Limits of this run.
    pub limits: OnnxLimits,
}

impl OnnxJob {
    /// Builds a job, computing [`OnnxJob::model_hash`].
    pub fn new(model: impl Into<Arc<[u8]>>, input: Vec<u8>, limits: OnnxLimits) -> Self {
        let model = model.into();
        let model_hash = *blake3::hash(&model).as_bytes();
        Self {
            model,
            model_hash,
            input,
            limits,
        }
    }
}

impl std::fmt::Debug for OnnxJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxJob")
            .field("model_len", &self.model.len())
            .field(
                "model_hash",
                &blake3::Hash::from_bytes(self.model_hash).to_hex(),
            )
            .field("input_len", &self.input.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// What a finished inference returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnnxOutcome {
    /// The model's first output, as `.npy` bytes (little-endian, C order).
    pub output: Vec<u8>,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether the plan came from the cache (false: compiled for this job).
    pub cached: bool,
    /// Most bytes of tensors alive at once during the run.
    pub peak_tensor_bytes: u64,
}

/// A tensor of a model's signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    /// Its name in the model.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its dimensions: a number, or the symbol of a free dimension (such as the batch).
    pub shape: Vec<String>,
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: {} [{}]",
            self.name,
            self.dtype,
            self.shape.join(", ")
        )
    }
}

/// A model's signature, as [`OnnxEngine::validate`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// The one input.
    pub input: TensorInfo,
    /// The first output (the one a job returns).
    pub output: TensorInfo,
    /// Number of outputs the model has (only the first is returned).
    pub outputs: usize,
    /// Operators in the optimized plan.
    pub operators: usize,
}

/// Which of tract's evaluation paths a plan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanKind {
    /// Decluttered and optimized: tract-linalg's SIMD kernels (what jobs run).
    Optimized,
    /// Typed and decluttered only: tract's reference implementations of the operators.
    #[cfg_attr(not(test), allow(dead_code))]
    Reference,
}

/// The bytes of one node's outputs, as an expression of the input's dimensions.
struct StepSize {
    node: usize,
    /// (element count, bytes per element) of each output.
    outputs: Vec<(TDim, usize)>,
}

/// A compiled model: the runnable plan and what the checks need.
struct Plan {
    plan: Arc<TypedSimplePlan>,
    input_dtype: Dtype,
    input_shape: Vec<TDim>,
    /// Steps in evaluation order, and the nodes whose values die after each step.
    steps: Vec<StepSize>,
    frees: Vec<Vec<usize>>,
    /// Nodes in the plan's graph (node ids are below this).
    nodes: usize,
    info: ModelInfo,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], (Arc<Plan>, u64)>,
    clock: u64,
}

impl Cache {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Arc<Plan>> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(hash).map(|(plan, used)| {
            *used = now;
            plan.clone()
        })
    }

    fn insert(&mut self, hash: [u8; 32], plan: Arc<Plan>) {
        self.clock += 1;
        if !self.entries.contains_key(&hash) && self.entries.len() >= ONNX_CACHE_CAPACITY {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| *h);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(hash, (plan, self.clock));
    }
}

#[derive(Default)]
struct Inner {
    cache: Mutex<Cache>,
    compiling: Mutex<usize>,
    compile_done: Condvar,
    compilations: AtomicU64,
}

/// One of the [`MAX_ONNX_COMPILATIONS`] slots, released on drop.
struct CompileSlot(Arc<Inner>);

impl Drop for CompileSlot {
    fn drop(&mut self) {
        let mut n = self
            .0
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        self.0.compile_done.notify_one();
    }
}

/// Runs ONNX jobs: the plan cache and the checks. Cloning is cheap and shares the cache;
/// `Send + Sync`, so several threads may run jobs at once.
#[derive(Clone, Default)]
pub struct OnnxEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OnnxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEngine")
            .field("cached_models", &self.cached_models())
            .field("compilations", &self.compilations())
            .finish()
    }
}

impl OnnxEngine {
    /// An engine with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Models compiled so far (each cache miss that reached the compiler counts once).
    pub fn compilations(&self) -> u64 {
        self.inner.compilations.load(Ordering::Relaxed)
    }

    /// Plans in the cache now.
    pub fn cached_models(&self) -> usize {
        self.cache().entries.len()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks that `model` is an ONNX model this engine can run (size, parse, operators, one
    /// input of a supported type), compiling it within `limits.compile_time` and caching the
    /// plan; returns its signature.
    pub fn validate(&self, model: &[u8], limits: &OnnxLimits) -> Result<ModelInfo, ExecError> {
        check_size("the model", model.len(), limits.max_model_bytes)?;
        let hash = *blake3::hash(model).as_bytes();
        let (plan, _) = self.prepare(&Arc::from(model), &hash, limits.compile_time)?;
        Ok(plan.info.clone())
    }

    /// Checks `input` against `model` without running it: the sizes, the model (compiled and
    /// cached as by [`OnnxEngine::validate`]), the `.npy` header and data, the dtype and shape
    /// against the model's input, and the memory estimate. What a submitter checks before it
    /// asks anyone to run the job.
    pub fn check_input(
        &self,
        model: &[u8],
        input: &[u8],
        limits: &OnnxLimits,
    ) -> Result<ModelInfo, ExecError> {
        check_size("the model", model.len(), limits.max_model_bytes)?;
        check_size("the input tensor", input.len(), limits.max_input_bytes)?;
        let hash = *blake3::hash(model).as_bytes();
        let (plan, _) = self.prepare(&Arc::from(model), &hash, limits.compile_time)?;
        let tensor = npy::decode(input, limits.max_elements)?;
        let dtype = Dtype::from_tract(tensor.datum_type())
            .ok_or_else(|| ExecError::Internal("decoded an unknown dtype".into()))?;
        let values = bind_input(&plan, dtype, tensor.shape())?;
        estimate(&plan, &values, limits)?;
        Ok(plan.info.clone())
    }

    /// Runs `job` on the calling thread (blocking; from async code use
    /// [`Pool::run_onnx`](crate::Pool::run_onnx)).
    pub fn run_blocking(&self, job: &OnnxJob) -> Result<OnnxOutcome, ExecError> {
        let limits = &job.limits;
        check_size("the model", job.model.len(), limits.max_model_bytes)?;
        check_size("the input tensor", job.input.len(), limits.max_input_bytes)?;
        let (plan, cached) = self.prepare(&job.model, &job.model_hash, limits.compile_time)?;
        let mut outcome = execute(&plan, &job.input, limits)?;
        outcome.cached = cached;
        Ok(outcome)
    }

    /// The plan for `bytes`, from the cache or compiled within `limit`; `true` when cached.
    fn prepare(
        &self,
        bytes: &Arc<[u8]>,
        hash: &[u8; 32],
        limit: Duration,
    ) -> Result<(Arc<Plan>, bool), ExecError> {
        if let Some(plan) = self.cache().get(hash) {
            return Ok((plan, true));
        }
        if blake3::hash(bytes).as_bytes() != hash {
            return Err(ExecError::InvalidModel(
                "model bytes do not match model_hash".into(),
            ));
        }
        let deadline = Instant::now() + limit;
        let slot = self.compile_slot(deadline, limit)?;
        if let Some(plan) = self.cache().get(hash) {
            return Ok((plan, true));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let this = self.clone();
        let (bytes, hash) = (bytes.clone(), *hash);
        std::thread::Builder::new()
            .name("agora-onnx-compile".into())
            .spawn(move || {
                let _slot = slot;
                this.inner.compilations.fetch_add(1, Ordering::Relaxed);
                let result = compile(&bytes, PlanKind::Optimized).map(Arc::new);
                if let Ok(plan) = &result {
                    this.cache().insert(hash, plan.clone());
                }
                let _ = tx.send(result);
            })
            .map_err(|e| ExecError::Internal(format!("compile thread: {e}")))?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r.map(|p| (p, false)),
            Err(RecvTimeoutError::Timeout) => Err(ExecError::CompileTime(limit)),
            Err(RecvTimeoutError::Disconnected) => Err(ExecError::Internal(
                "compile thread ended without an answer".into(),
            )),
        }
    }

    fn compile_slot(&self, deadline: Instant, limit: Duration) -> Result<CompileSlot, ExecError> {
        let inner = &self.inner;
        let mut n = inner
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *n >= MAX_ONNX_COMPILATIONS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ExecError::CompileTime(limit));
            }
            n = inner
                .compile_done
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *n += 1;
        Ok(CompileSlot(self.inner.clone()))
    }
}

fn check_size(what: &str, size: usize, limit: usize) -> Result<(), ExecError> {
    if size > limit {
        return Err(ExecError::TooLarge {
            what: what.into(),
            size: size as u64,
            limit: limit as u64,
            unit: "bytes".into(),
        });
    }
    Ok(())
}

/// Renders a tract error with its causes on one line, bounded.
fn describe(e: &TractError) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    bounded(parts.join(": "))
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" (...)");
    }
    s
}

fn panic_detail(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    bounded(msg)
}

/// Parses, checks and compiles a model; never panics (tract's panics become errors).
fn compile(bytes: &[u8], kind: PlanKind) -> Result<Plan, ExecError> {
    catch_unwind(AssertUnwindSafe(|| compile_inner(bytes, kind))).unwrap_or_else(|p| {
        Err(ExecError::InvalidModel(format!(
            "tract failed on this model ({}); the model may be malformed",
            panic_detail(&*p)
        )))
    })
}

fn compile_inner(bytes: &[u8], kind: PlanKind) -> Result<Plan, ExecError> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(|e| {
            ExecError::InvalidModel(format!(
                "not a readable ONNX model ({}); export it with torch.onnx.export, skl2onnx or \
                 tf2onnx and check it with onnx.checker.check_model",
                describe(&e)
            ))
        })?;
    let mut unsupported: Vec<String> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<UnimplementedOp>())
        .map(|n| {
            let op = n.op.name();
            let op = op
                .strip_prefix("Unimplemented(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or(&op);
            format!("{op} (node `{}`)", n.name)
        })
        .collect();
    if !unsupported.is_empty() {
        unsupported.sort();
        unsupported.dedup();
        unsupported.truncate(8);
        return Err(ExecError::UnsupportedOperator(unsupported.join(", ")));
    }
    if model.inputs.len() != 1 {
        let names: Vec<&str> = model
            .inputs
            .iter()
            .map(|o| model.node(o.node).name.as_str())
            .collect();
        return Err(ExecError::InvalidModel(format!(
            "the model has {} inputs ({}); an ONNX job passes exactly one tensor",
            model.inputs.len(),
            names.join(", ")
        )));
    }
    if model.outputs.is_empty() {
        return Err(ExecError::InvalidModel("the model has no output".into()));
    }
    let model = name_free_dims(model).map_err(|e| {
        ExecError::InvalidModel(format!("the model's input fact ({})", describe(&e)))
    })?;
    let typed = model.into_typed().map_err(|e| {
        ExecError::InvalidModel(format!(
            "tract could not infer the model's types and shapes ({}); the graph input needs a \
             declared element type and rank",
            describe(&e)
        ))
    })?;
    let typed = match kind {
        PlanKind::Optimized => typed.into_optimized(),
        PlanKind::Reference => typed.into_decluttered(),
    }
    .map_err(|e| {
        ExecError::InvalidModel(format!(
            "tract could not compile the model ({})",
            describe(&e)
        ))
    })?;
    plan_for(typed)
}

/// Gives every dimension of the input that the model leaves unnamed (an ONNX `dim {}`, as
/// skl2onnx writes the batch) a symbol of its own, so that tract can type the graph: `N` for the
/// first axis, `d1`, `d2`, ... for the others.
fn name_free_dims(mut model: InferenceModel) -> Result<InferenceModel, TractError> {
    let input = model.inputs[0];
    let mut fact = model.outlet_fact(input)?.clone();
    if fact.shape.is_open() {
        return Ok(model);
    }
    let rank = fact.shape.dims().count();
    let mut changed = false;
    for i in 0..rank {
        if fact.shape.dim(i) == Some(GenericFactoid::Any) {
            let name = if i == 0 {
                "N".to_string()
            } else {
                format!("d{i}")
            };
            let sym = model.symbols.new_with_prefix(&name);
            changed |= fact.shape.set_dim(i, TDim::Sym(sym));
        }
    }
    if changed {
        model.set_outlet_fact(input, fact)?;
    }
    Ok(model)
}

fn tensor_info(name: String, fact: &TypedFact) -> Result<TensorInfo, ExecError> {
    let dt = match fact.datum_type {
        // Integers tract derived from shapes: written as int64 (see `npy::encode`).
        DatumType::TDim => DatumType::I64,
        dt => dt,
    };
    let dtype = Dtype::from_tract(dt).ok_or_else(|| {
        ExecError::InvalidModel(format!(
            "tensor `{name}` has type {:?}; ONNX jobs take and return numeric or bool tensors",
            fact.datum_type
        ))
    })?;
    Ok(TensorInfo {
        name,
        dtype,
        shape: fact.shape.iter().map(|d| d.to_string()).collect(),
    })
}

fn plan_for(model: TypedModel) -> Result<Plan, ExecError> {
    let tract_err = |e: TractError| {
        ExecError::InvalidModel(format!("tract could not plan the model ({})", describe(&e)))
    };
    let input = model.inputs[0];
    let output = model.outputs[0];
    let input_fact = model.outlet_fact(input).map_err(tract_err)?.clone();
    let output_fact = model.outlet_fact(output).map_err(tract_err)?.clone();
    let info = ModelInfo {
        input: tensor_info(model.node(input.node).name.clone(), &input_fact)?,
        output: tensor_info(
            model
                .outlet_label(output)
                .unwrap_or(&model.node(output.node).name)
                .to_string(),
            &output_fact,
        )?,
        outputs: model.outputs.len(),
        operators: model.nodes().len(),
    };
    let plan = SimplePlan::new(model).map_err(tract_err)?;
    let graph = plan.model();
    let order = plan.order_without_consts().to_vec();
    let outputs: Vec<usize> = graph.outputs.iter().map(|o| o.node).collect();
    let mut last_use: HashMap<usize, usize> = HashMap::new();
    for (step, &n) in order.iter().enumerate() {
        for i in &graph.node(n).inputs {
            last_use.insert(i.node, step);
        }
    }
    let mut frees = vec![Vec::new(); order.len()];
    for (&node, &step) in &last_use {
        if !outputs.contains(&node) && order.contains(&node) {
            frees[step].push(node);
        }
    }
    let steps = order
        .iter()
        .map(|&n| StepSize {
            node: n,
            outputs: graph
                .node(n)
                .outputs
                .iter()
                .map(|o| (o.fact.shape.volume(), o.fact.datum_type.size_of()))
                .collect(),
        })
        .collect();
    Ok(Plan {
        input_dtype: info.input.dtype,
        input_shape: input_fact.shape.to_tvec().into_vec(),
        nodes: graph.nodes().len(),
        plan,
        steps,
        frees,
        info,
    })
}

/// Binds the model's free input dimensions to the tensor's, or says how they differ.
fn bind_input(plan: &Plan, dtype: Dtype, shape: &[usize]) -> Result<SymbolValues, ExecError> {
    let mismatch = |hint: &str| {
        ExecError::InvalidTensor(format!(
            "the model's input {} does not match the tensor given: {dtype} {shape:?}; {hint}",
            plan.info.input
        ))
    };
    if dtype != plan.input_dtype {
        return Err(mismatch(&format!(
            "convert it with x.astype(numpy.{})",
            plan.input_dtype
        )));
    }
    if shape.len() != plan.input_shape.len() {
        return Err(mismatch("reshape it to the model's rank"));
    }
    let mut values = SymbolValues::default();
    for (want, &got) in plan.input_shape.iter().zip(shape) {
        match want {
            TDim::Sym(s) => match values.get(s) {
                Some(v) if v != got as i64 => return Err(mismatch("the free dimensions differ")),
                _ => values.set(s, got as i64),
            },
            d => {
                if let Some(v) = d.as_i64()
                    && v != got as i64
                {
                    return Err(mismatch("reshape it to the model's shape"));
                }
            }
        }
    }
    Ok(values)
}

/// Live tensor bytes, step by step, from `sizes[node]` (the bytes of that node's outputs).
fn peak_bytes(plan: &Plan, sizes: &[u64]) -> u64 {
    let size = |n: usize| sizes.get(n).copied().unwrap_or(0);
    let (mut live, mut peak) = (0u64, 0u64);
    for (step, s) in plan.steps.iter().enumerate() {
        live = live.saturating_add(size(s.node));
        peak = peak.max(live);
        for &n in &plan.frees[step] {
            live = live.saturating_sub(size(n));
        }
    }
    peak
}

/// The estimate before the run: element counts and live bytes from the plan's shapes with the
/// input's dimensions bound. Shapes that depend on data are not known yet and count as 0.
fn estimate(plan: &Plan, values: &SymbolValues, limits: &OnnxLimits) -> Result<(), ExecError> {
    let mut sizes = vec![0u64; plan.nodes];
    for s in &plan.steps {
        let mut bytes = 0u64;
        for (volume, size) in &s.outputs {
            let Some(n) = volume.eval(values).as_i64() else {
                continue;
            };
            let n = u64::try_from(n).unwrap_or(0);
            if n > limits.max_elements {
                return Err(ExecError::TooLarge {
                    what: format!(
                        "a tensor of node `{}` (estimated)",
                        plan.plan.model().node(s.node).name
                    ),
                    size: n,
                    limit: limits.max_elements,
                    unit: "elements".into(),
                });
            }
            bytes = bytes.saturating_add(n.saturating_mul(*size as u64));
        }
        if let Some(slot) = sizes.get_mut(s.node) {
            *slot = bytes;
        }
    }
    let peak = peak_bytes(plan, &sizes);
    if peak > limits.memory_bytes {
        return Err(ExecError::MemoryLimit {
            requested: peak,
            limit: limits.memory_bytes,
        });
    }
    Ok(())
}

/// Parses the input, checks it, runs the plan and encodes the first output.
fn execute(plan: &Plan, input: &[u8], limits: &OnnxLimits) -> Result<OnnxOutcome, ExecError> {
    let tensor = npy::decode(input, limits.max_elements)?;
    let dtype = Dtype::from_tract(tensor.datum_type())
        .ok_or_else(|| ExecError::Internal("decoded an unknown dtype".into()))?;
    let values = bind_input(plan, dtype, tensor.shape())?;
    estimate(plan, &values, limits)?;
    let deadline = Instant::now() + limits.wall_time;
    let (output, peak) = catch_unwind(AssertUnwindSafe(|| run(plan, tensor, limits, deadline)))
        .unwrap_or_else(|p| {
            Err(ExecError::InvalidModel(format!(
                "tract failed while running this model ({}); the model may be malformed",
                panic_detail(&*p)
            )))
        })?;
    let elements = output.len() as u64;
    if elements > limits.max_elements {
        return Err(ExecError::TooLarge {
            what: "the output tensor".into(),
            size: elements,
            limit: limits.max_elements,
            unit: "elements".into(),
        });
    }
    let (dtype, bytes) = npy::encode(&output)?;
    check_size("the output tensor", bytes.len(), limits.max_output_bytes)?;
    Ok(OnnxOutcome {
        output: bytes,
        dtype,
        shape: output.shape().to_vec(),
        cached: false,
        peak_tensor_bytes: peak,
    })
}

/// Evaluates the plan node by node, checking the deadline before each node and the live
/// tensor bytes after it. Returns the first output and the peak of live bytes.
fn run(
    plan: &Plan,
    input: Tensor,
    limits: &OnnxLimits,
    deadline: Instant,
) -> Result<(TValue, u64), ExecError> {
    let mut state = plan
        .plan
        .spawn()
        .map_err(|e| ExecError::Internal(format!("tract state: {}", describe(&e))))?;
    let mut stop: Option<ExecError> = None;
    let mut step = 0usize;
    let (mut live, mut peak) = (0u64, 0u64);
    let mut sizes = vec![0u64; plan.nodes];
    let result = state.run_plan_with_eval(
        tvec![input.into_tvalue()],
        |ctx: &EvalContext<'_>,
         op_state: Option<&mut (dyn OpState + 'static)>,
         node: &tract_onnx::prelude::TypedNode,
         inputs| {
            if Instant::now() > deadline {
                stop = Some(ExecError::WallTime(limits.wall_time));
                return Err(TractError::msg("wall-clock limit"));
            }
            let outputs = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)?;
            let mut bytes = 0u64;
            for t in &outputs {
                let n = t.len() as u64;
                if n > limits.max_elements {
                    stop = Some(ExecError::TooLarge {
                        what: format!("a tensor of node `{}`", node.name),
                        size: n,
                        limit: limits.max_elements,
                        unit: "elements".into(),
                    });
                    return Err(TractError::msg("element limit"));
                }
                bytes = bytes.saturating_add(n.saturating_mul(t.datum_type().size_of() as u64));
            }
            if let Some(slot) = sizes.get_mut(node.id) {
                *slot = bytes;
            }
            live = live.saturating_add(bytes);
            peak = peak.max(live);
            if live > limits.memory_bytes {
                stop = Some(ExecError::MemoryLimit {
                    requested: live,
                    limit: limits.memory_bytes,
                });
                return Err(TractError::msg("memory limit"));
            }
            if let Some(frees) = plan.frees.get(step) {
                for &n in frees {
                    live = live.saturating_sub(sizes.get(n).copied().unwrap_or(0));
                }
            }
            step += 1;
            Ok::<_, TractError>(outputs)
        },
    );
    if let Some(e) = stop {
        return Err(e);
    }
    let mut outputs = result.map_err(|e| {
        ExecError::InvalidModel(format!("the model failed on this input ({})", describe(&e)))
    })?;
    if Instant::now() > deadline {
        return Err(ExecError::WallTime(limits.wall_time));
    }
    if outputs.is_empty() {
        return Err(ExecError::InvalidModel(
            "the model produced no output".into(),
        ));
    }
    Ok((outputs.swap_remove(0), peak))
}

/// Compiles `model` with the given evaluation path, uncached, and runs `input` through it (for
/// the tests that compare tract's kernel paths).
#[cfg(test)]
pub(crate) fn run_uncached(
    model: &[u8],
    kind: PlanKind,
    input: &[u8],
    limits: &OnnxLimits,
) -> Result<OnnxOutcome, ExecError> {
    let plan = compile(model, kind)?;
    execute(&plan, input, limits)
}

/// A compiled plan for repeated uncached runs in tests.
#[cfg(test)]
pub(crate) struct TestPlan(Plan);

#[cfg(test)]
impl TestPlan {
    pub(crate) fn new(model: &[u8], kind: PlanKind) -> Result<Self, ExecError> {
        compile(model, kind).map(TestPlan)
    }

    pub(crate) fn run(&self, input: &[u8], limits: &OnnxLimits) -> Result<OnnxOutcome, ExecError> {
        execute(&self.0, input, limits)
    }
}
