"""ci-runner's Python kernel (the protocol is in runners/kernels/README.md).

The wrapper starts `python3 -u /job/main.py` with this folder on PYTHONPATH, so `site` imports
this module before CPython opens the script. It preloads modules, says `ready` and waits. On
`run` it puts argv, environment, working directory, sys.path and stdin back as a fresh
interpreter has them, imports the real sitecustomize (if any), and runs /job/main.py in the
interpreter's `__main__` as CPython would, printing an uncaught exception without any kernel
frame and exiting with the same status; then it ends without the interpreter's teardown of
the preloaded modules (hundreds of milliseconds for the data stack), after the threads,
atexit handlers and flushes a normal exit runs.
On `snippet` it never returns: it runs snippets in `__main__`'s namespace until the wrapper
closes the channel.

Only modules that are loaded before `site` runs (os, sys) are used on the one-shot path, so
`sys.modules` holds nothing of the kernel's but the preloaded modules.
"""

import os
import sys

_CONTROL = "CI_RUNNER_KERNEL_CONTROL"
_HERE = os.path.dirname(os.path.abspath(__file__))


class _Channel:
    def __init__(self, folder):
        self.inbox = os.open(os.path.join(folder, "in"), os.O_RDONLY)
        self.outbox = os.open(os.path.join(folder, "out"), os.O_WRONLY)
        self.pending = b""

    def receive(self):
        """The next message as (verb, words), or None once the wrapper has gone."""
        while b"\n" not in self.pending:
            chunk = os.read(self.inbox, 65536)
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        words = line.decode("ascii").split(" ")
        return words[0], words[1:]

    def send(self, *words):
        line = (" ".join(words) + "\n").encode("ascii")
        while line:
            line = line[os.write(self.outbox, line):]

    def note(self, text):
        self.send("note", text.encode("utf-8", "replace").hex())

    def close(self):
        os.close(self.inbox)
        os.close(self.outbox)


def _text(word):
    return bytes.fromhex(word).decode("utf-8", "surrogateescape")


class _Startup:
    """What a fresh interpreter would have when the script starts, captured before preloading."""

    def __init__(self):
        self.environ = {
            k: v for k, v in os.environ.items() if k not in (_CONTROL, "PYTHONPATH")
        }
        self.cwd = os.getcwd()
        self.path = [p for p in sys.path if p != _HERE]

    def restore(self):
        for key in [k for k in os.environ if k not in self.environ]:
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        sys.path[:] = self.path
        sys.path_importer_cache.pop(_HERE, None)


def _preload(names, channel):
    for name in names:
        try:
            if name == "matplotlib" and "MPLBACKEND" not in os.environ:
                # The images set MPLBACKEND=Agg, which the import reads; without it, the same.
                __import__(name).use("Agg")
            else:
                __import__(name)
        except BaseException as err:  # a preload must never kill the kernel
            channel.note(f"cannot preload {name}: {type(err).__name__}: {err}")


def _warm_up(names, channel):
    """Runs what a data-science program's first moments run, once, so its code paths and
    caches (fonts, the PNG writer, the CSV parser) are warm: the first plot of a run costs
    about half as much. Leaves no figure, option or name behind."""
    try:
        if "pandas" in names:
            import io

            import pandas

            frame = pandas.read_csv(io.StringIO("g,x\n0,1\n1,2\n0,3\n"))
            frame.groupby("g")["x"].mean()
        if "matplotlib.pyplot" in names:
            import io

            import matplotlib.pyplot as plt

            figure = plt.figure(figsize=(2, 2))
            figure.gca().bar([0, 1], [1, 2])
            figure.savefig(io.BytesIO(), format="png")
            plt.close("all")
    except BaseException as err:  # a warm-up must never kill the kernel
        channel.note(f"warm-up failed: {type(err).__name__}: {err}")


def _fresh(words, channel, startup):
    stdin, args = words[0], [_text(w) for w in words[1:]]
    channel.close()
    if stdin == "null":
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    sys.argv = [sys.argv[0], *args]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [*sys.orig_argv, *args]
    startup.restore()
    # Import the image's own sitecustomize, as a fresh interpreter does before the script
    # (with none, nothing: this module leaves sys.modules either way).
    del sys.modules["sitecustomize"]
    try:
        __import__("sitecustomize")
    except ImportError as err:
        if err.name != "sitecustomize":
            raise
    _run_main(sys.argv[0])


def _run_main(path):
    """Runs the script as `python3 -u path` does (in the interpreter's own `__main__`, with
    what CPython sets there for a script), then ends as an interpreter ends (threads joined,
    atexit handlers run, streams flushed) but without tearing down the preloaded modules:
    for numpy, pandas and matplotlib that teardown alone costs about 200 ms of CPU."""
    main = sys.modules["__main__"].__dict__
    main["__file__"] = path
    main["__cached__"] = None
    main["__loader__"] = sys.modules["_frozen_importlib_external"].SourceFileLoader(
        "__main__", path
    )
    # CPython puts the script's folder first on the path once `site` is done.
    sys.path.insert(0, os.path.dirname(path))
    try:
        with open(path, "rb") as file:
            source = file.read()
        exec(compile(source, path, "exec", dont_inherit=True), main)
        status = 0
    except SystemExit as exit:
        status = _exit_status(exit.code)
    except KeyboardInterrupt as err:
        _print_uncaught(err)
        _end(None)
    except BaseException as err:
        _print_uncaught(err)
        status = 1
    _end(status)


def _end(status):
    """What Py_FinalizeEx does before it tears modules down, then the exit (`None`: by
    SIGINT, as an interpreter ends after an uncaught KeyboardInterrupt)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    if status is None:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _session(channel, path):
    """Runs snippets in `__main__`'s namespace until the wrapper closes the channel."""
    import atexit
    import signal

    namespace = sys.modules["__main__"].__dict__
    # Like the interactive interpreter: modules of the working directory can be imported.
    sys.path.insert(0, "")
    sys.argv = [""]
    # SIGINT interrupts snippets only; between them the kernel ignores it.
    handler = [signal.default_int_handler]
    _ignore_sigint(signal)
    while path is not None:
        status, how = _snippet(path, namespace, handler, signal)
        for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:
            try:
                stream.flush()
            except Exception:
                pass
        channel.send("done", str(status), how)
        message = channel.receive()
        path = _text(message[1][0]) if message and message[0] == "snippet" else None
    # The wrapper is gone: end as an interpreter ends, running the snippets' atexit handlers.
    atexit._run_exitfuncs()
    os._exit(0)


def _snippet(path, namespace, handler, signal):
    _rewind_stdin()
    try:
        try:
            signal.signal(signal.SIGINT, handler[0])
            with open(path, "rb") as file:
                code = compile(file.read(), path, "exec", dont_inherit=True)
            exec(code, namespace)
        finally:
            handler[0] = signal.getsignal(signal.SIGINT)
            _ignore_sigint(signal)
    except SystemExit as exit:
        return _exit_status(exit.code), "exit"
    except KeyboardInterrupt as err:
        _print_uncaught(err)
        return 130, "interrupted"
    except BaseException as err:
        _print_uncaught(err)
        return 1, "error"
    return 0, "ok"


def _rewind_stdin():
    """fd 0 is the job's stdin file, which the wrapper writes anew before each snippet (in
    place): each snippet reads it from its start."""
    try:
        os.lseek(0, 0, os.SEEK_SET)
        if sys.stdin is not None and sys.stdin.fileno() == 0:
            sys.stdin.seek(0)
    except Exception:  # a snippet closed or replaced it: nothing to rewind
        pass


def _ignore_sigint(signal):
    while True:
        try:
            # Raises a KeyboardInterrupt still pending from the snippet before it takes effect.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            pass


def _exit_status(code):
    """What `python3 script.py` exits with after `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _print_uncaught(err):
    """Prints an exception as the interpreter prints one that ends a script: no kernel frame."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    err.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(err), err, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = err
    try:
        sys.excepthook(type(err), err, tb)
    except BaseException:
        sys.__excepthook__(type(err), err, tb)


def _main():
    folder = os.environ.get(_CONTROL)
    if not folder:
        # On the path without being a kernel: be the image's sitecustomize, if any.
        startup = _Startup()
        sys.path[:] = startup.path
        del sys.modules["sitecustomize"]
        __import__("sitecustomize")
        return
    startup = _Startup()
    channel = _Channel(folder)
    message = channel.receive()
    if message is None or message[0] != "preload":
        os._exit(70)
    preload = [_text(w) for w in message[1]]
    _preload(preload, channel)
    _warm_up(preload, channel)
    # What a preload wrote must be in the pipes now, where the wrapper discards it.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    startup.restore()
    channel.send("ready", "interruptible")
    message = channel.receive()
    if message is None:
        os._exit(0)
    verb, words = message
    if verb == "run":
        _fresh(words, channel, startup)
    if verb != "snippet":
        os._exit(70)
    _session(channel, _text(words[0]))


_main()
