"""Three shortcuts in Triton's interpreter, so that interpreter tests finish in seconds. The
kernel code that runs is unchanged, and so are its results:

1. The interpreter evaluates a ``tl.reduce`` whose combine function it does not recognise one
   element at a time in Python. ``tl.sort`` (used by the Top-H and cov kernels) is a bitonic
   network whose every compare-and-swap stage calls ``tl.xor_sum``, so one sort of 8192 keys
   took ~10 s: over 90 % of the Top-H tests' interpreter time. XOR is associative and
   commutative, so numpy's ``bitwise_xor.reduce`` gives the same bits.
2. Every call of a ``@triton.jit`` helper re-patches ``triton.language`` for the interpreter
   (an ``inspect.getmembers`` scan of four modules, ~2.5 ms), although the launch already
   patched the same module objects: half the time of a Top-H sampling launch. Inside a launch
   a helper call whose modules are already patched skips the scan; the launch's own restore
   still undoes everything.
3. ``_get_np_dtype`` (the numpy dtype of a Triton dtype, asked on nearly every interpreted op)
   rebuilds and hashes a 19-entry dict per call, ~10 % of interpreter time; its answers are
   remembered per scalar dtype name (each first answer comes from the original function).

Installed by ``conftest.py`` for the test process (and the probe dry run a test starts), never
by the package. When a Triton release renames what is patched here, that shortcut is left out
and the tests just run slower.

    >>> import interpreter_speedups
    >>> interpreter_speedups.install()  # doctest: +SKIP
"""

import inspect

import numpy as np


def install() -> bool:
    """Install the three shortcuts; True when all are in place."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    return all([_vectorise_xor_sum(tl, interpreter), _patch_language_once_per_launch(tl, interpreter),
                _remember_numpy_dtypes(tl, interpreter)])


def _vectorise_xor_sum(tl, interpreter) -> bool:
    reduce_ops = getattr(interpreter, "ReduceOps", None)
    xor_combine = getattr(tl.standard, "_xor_combine", None)
    if reduce_ops is None or xor_combine is None or not hasattr(reduce_ops, "apply_impl"):
        return False
    if getattr(reduce_ops.apply_impl, "_ek_vectorised", False):
        return True
    generic = reduce_ops.apply_impl

    def apply_impl(self, input):
        if self.combine_fn is xor_combine and len(input) == 1:
            data = input[0].handle.data
            out = np.bitwise_xor.reduce(data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(out, input[0].dtype)
        return generic(self, input)

    apply_impl._ek_vectorised = True
    reduce_ops.apply_impl = apply_impl
    return True


class _NothingToRestore:
    def restore(self) -> None:
        pass


def _patch_language_once_per_launch(tl, interpreter) -> bool:
    real_patch = getattr(interpreter, "_patch_lang", None)
    if real_patch is None or not hasattr(interpreter, "_LangPatchScope"):
        return False  # an interpreter that does not restore its patches: leave it alone
    if getattr(real_patch, "_ek_once_per_launch", False):
        return True
    launch = {}  # while a launch runs: the language modules patched so far, helper scopes
    modules_of = {}  # function -> ids of the language modules its globals name (fixed per function)

    def patch_lang(fn):
        langs = modules_of.get(fn)
        if langs is None:
            langs = modules_of[fn] = frozenset(
                id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
        if launch and langs <= launch["langs"]:
            return _NothingToRestore()  # a helper call: its modules are patched already
        scope = real_patch(fn)
        if launch:  # a helper that sees a module the launch did not: keep its patches to the end
            launch["langs"] |= langs
            launch["helpers"].append(scope)
            return _NothingToRestore()
        launch.update(langs=set(langs), helpers=[])
        restore_launch = scope.restore

        def restore():
            try:
                for helper in reversed(launch["helpers"]):
                    helper.restore()
                restore_launch()
            finally:
                launch.clear()

        scope.restore = restore
        return scope

    patch_lang._ek_once_per_launch = True
    interpreter._patch_lang = patch_lang
    return True


def _remember_numpy_dtypes(tl, interpreter) -> bool:
    original = getattr(interpreter, "_get_np_dtype", None)
    if original is None or not hasattr(tl, "pointer_type") or not hasattr(tl, "block_type"):
        return False
    if getattr(original, "_ek_remembered", False):
        return True
    pointer = np.dtype(np.uint64)
    answers = {}

    def get_np_dtype(tt_dtype):
        if isinstance(tt_dtype, tl.block_type):
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, tl.pointer_type):
            return pointer
        name = getattr(tt_dtype, "name", None)
        if not isinstance(name, str):
            return original(tt_dtype)
        answer = answers.get(name)
        if answer is None:
            answer = answers[name] = original(tt_dtype)
        return answer

    get_np_dtype._ek_remembered = True
    interpreter._get_np_dtype = get_np_dtype
    return True
