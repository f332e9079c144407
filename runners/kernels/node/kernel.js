'use strict';
// ci-runner's Node.js kernel (the protocol is in runners/kernels/README.md).
//
// The wrapper starts `node --require <this file> /job/main.js`. Node runs preloads before it
// loads the main module, so this file preloads modules, says `ready` and blocks on the control
// channel. On `run` it puts argv, execArgv, environment and working directory back as a fresh
// process has them and returns: Node then loads /job/main.js as its main module itself, so
// `require.main`, stack traces, exit codes and `process.on('exit')` are Node's own. On
// `snippet` it lets Node go on to its event loop without a main module and runs snippets with
// `vm.runInThisContext`, so `var`, functions, `globalThis` and `require`d modules persist.
//
// Everything lives inside this function: a module's own scope, so no global is added. It does
// nothing in worker threads (which inherit `--require`) or outside a kernel.
(function kernel() {
  const { isMainThread } = require('worker_threads');
  const folder = process.env.CI_RUNNER_KERNEL_CONTROL;
  if (!isMainThread || !folder) {
    return;
  }
  const fs = require('fs');
  const path = require('path');
  const Module = require('module');

  const text = (word) => Buffer.from(word, 'hex').toString('utf8');
  const hex = (s) => Buffer.from(String(s), 'utf8').toString('hex');

  // The main module's path: modules are resolved from where the program would resolve them.
  const script = process.argv[1];
  const startup = {
    env: Object.fromEntries(
      Object.entries(process.env).filter(([k]) => k !== 'CI_RUNNER_KERNEL_CONTROL'),
    ),
    cwd: process.cwd(),
  };
  const restore = () => {
    for (const key of Object.keys(process.env)) {
      if (!Object.prototype.hasOwnProperty.call(startup.env, key)) delete process.env[key];
    }
    for (const [key, value] of Object.entries(startup.env)) {
      if (process.env[key] !== value) process.env[key] = value;
    }
    if (process.cwd() !== startup.cwd) process.chdir(startup.cwd);
  };

  const channel = openChannel(folder);
  const first = channel.receive();
  if (!first || first[0] !== 'preload') process.exit(70);
  preload(first.slice(1).map(text), channel);
  restore();
  channel.send('ready', 'interruptible');

  const message = channel.receive();
  if (!message) process.exit(0);
  const [verb, ...words] = message;
  if (verb === 'run') {
    channel.close();
    // fd 0 stays as the wrapper opened it: Node cannot replace a descriptor.
    process.argv.push(...words.slice(1).map(text));
    process.execArgv.length = 0;
    restore();
    delete require.cache[__filename];
    return;
  }
  if (verb !== 'snippet') process.exit(70);
  // No main module: when Node would load it, serve snippets on the event loop instead.
  const runMain = Module.runMain;
  Module.runMain = function session() {
    Module.runMain = runMain;
    serve(channel, text(words[0]), restore);
  };

  function openChannel(dir) {
    return {
      inbox: fs.openSync(path.join(dir, 'in'), 'r'),
      outbox: fs.openSync(path.join(dir, 'out'), 'w'),
      pending: Buffer.alloc(0),
      // The next message as [verb, ...words]; null once the wrapper has gone. Blocks.
      receive() {
        for (;;) {
          const at = this.pending.indexOf(10);
          if (at >= 0) {
            const line = this.pending.subarray(0, at).toString('latin1');
            this.pending = this.pending.subarray(at + 1);
            return line.split(' ');
          }
          const chunk = Buffer.alloc(65536);
          const n = fs.readSync(this.inbox, chunk, 0, chunk.length, null);
          if (n === 0) return null;
          this.pending = Buffer.concat([this.pending, chunk.subarray(0, n)]);
        }
      },
      send(...words) {
        const line = Buffer.from(`${words.join(' ')}\n`, 'latin1');
        for (let done = 0; done < line.length; ) done += fs.writeSync(this.outbox, line, done);
      },
      close() {
        fs.closeSync(this.inbox);
        fs.closeSync(this.outbox);
      },
    };
  }

  function preload(names, control) {
    // What a preload writes to a full pipe would wait in Node's queue and come out in the
    // program's time, past the wrapper's discarding: it is dropped here instead. The streams
    // are lazy, and creating one opens descriptors: only a stream the preload creates is muted.
    const muted = new Set();
    const getters = ['stdout', 'stderr'].map((name) => [
      name,
      Object.getOwnPropertyDescriptor(process, name),
    ]);
    for (const [name, descriptor] of getters) {
      if (!descriptor || !descriptor.get || !descriptor.configurable) continue;
      Object.defineProperty(process, name, {
        ...descriptor,
        get() {
          const stream = descriptor.get.call(process);
          if (!muted.has(stream)) {
            muted.add(stream);
            stream.write = (chunk, encoding, callback) => {
              const done = typeof encoding === 'function' ? encoding : callback;
              if (typeof done === 'function') process.nextTick(done);
              return true;
            };
          }
          return stream;
        },
      });
    }
    const load = Module.createRequire(script);
    for (const name of names) {
      try {
        load(name);
      } catch (err) {
        control.send('note', hex(`cannot preload ${name}: ${err && err.message}`));
      }
    }
    for (const [name, descriptor] of getters) {
      if (descriptor) Object.defineProperty(process, name, descriptor);
    }
    for (const stream of muted) delete stream.write;
  }

  function serve(control, firstSnippet, restoreStartup) {
    const net = require('net');
    const vm = require('vm');
    const util = require('util');
    restoreStartup();
    process.argv.length = 1;
    process.execArgv.length = 0;
    globalThis.require = Module.createRequire(path.join(process.cwd(), '[session]'));
    const exit = process.exit;
    const state = { running: null };
    // SIGINT interrupts the running snippet (vm's breakOnSigint, or the promise it returned);
    // between snippets it is ignored.
    process.on('SIGINT', () => {
      if (state.running) state.running.interrupt();
    });
    process.on('uncaughtException', (err) => {
      printUncaught(err);
      if (state.running) state.running.failed = true;
    });
    const queue = [firstSnippet];
    let busy = false;
    const next = async () => {
      if (busy) return;
      busy = true;
      while (queue.length) {
        const file = queue.shift();
        if (file === null) exit.call(process, 0);
        const [status, how] = await runSnippet(file);
        await Promise.all([drained(process.stdout), drained(process.stderr)]);
        control.send('done', String(status), how);
      }
      busy = false;
    };
    const input = new net.Socket({ fd: control.inbox, readable: true, writable: false });
    let pending = control.pending.toString('latin1');
    input.on('data', (chunk) => {
      pending += chunk.toString('latin1');
      let at;
      while ((at = pending.indexOf('\n')) >= 0) {
        const [v, w] = pending.slice(0, at).split(' ');
        pending = pending.slice(at + 1);
        queue.push(v === 'snippet' && w ? text(w) : null);
      }
      next();
    });
    // The wrapper is gone: end as Node ends, running the snippets' 'exit' listeners.
    input.on('end', () => {
      queue.push(null);
      next();
    });
    next();

    async function runSnippet(file) {
      const run = { failed: false, interrupt: () => {} };
      state.running = run;
      process.exitCode = undefined;
      process.exit = (code) => {
        throw new SnippetExit(code === undefined ? process.exitCode : code);
      };
      try {
        const source = fs.readFileSync(file, 'utf8').replace(/^#!.*/, '');
        const result = new vm.Script(source, { filename: file }).runInThisContext({
          breakOnSigint: true,
        });
        if (result && typeof result.then === 'function') {
          await new Promise((resolve, reject) => {
            run.interrupt = () => reject(interrupted());
            result.then(resolve, reject);
          });
        }
      } catch (err) {
        return outcome(err);
      } finally {
        process.exit = exit;
        state.running = null;
      }
      const code = process.exitCode;
      process.exitCode = undefined;
      if (run.failed) return [1, 'error'];
      return code === undefined ? [0, 'ok'] : [code & 0xff, 'exit'];
    }

    function outcome(err) {
      if (err instanceof SnippetExit) return [Number(err.code || 0) & 0xff, 'exit'];
      if (err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
        process.stderr.write(`${err.message}\n`);
        return [130, 'interrupted'];
      }
      printUncaught(err);
      return [1, 'error'];
    }

    function interrupted() {
      const err = new Error('Script execution was interrupted by `SIGINT`');
      err.code = 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
      return err;
    }

    // As Node prints an exception that ends a script, without the kernel's frames.
    function printUncaught(err) {
      let text = err instanceof Error && err.stack ? err.stack : util.inspect(err);
      const lines = text.split('\n');
      const cut = lines.findIndex((l) => /^\s+at /.test(l) && isKernelFrame(l));
      if (cut >= 0) text = lines.slice(0, cut).join('\n');
      process.stderr.write(`${text}\n\nNode.js ${process.version}\n`);
    }

    function isKernelFrame(line) {
      return line.includes('(node:vm:') || line.includes(__filename) || line.includes('new Script');
    }
  }

  function drained(stream) {
    return new Promise((resolve) => stream.write('', resolve));
  }

  class SnippetExit {
    constructor(code) {
      this.code = code;
    }
  }
})();
