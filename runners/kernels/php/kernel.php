<?php
// ci-runner's PHP kernel (the protocol is in runners/kernels/README.md).
//
// The wrapper starts `php -d auto_prepend_file=<this file> /job/main.php`. PHP opens the main
// script before the prepended file runs but reads it only after, so this file preloads, says
// `ready` and waits while /job/main.php is still empty. On `run` it sets $argv, $_SERVER, the
// environment, the working directory and stdin as a fresh interpreter has them and returns:
// PHP then compiles and runs /job/main.php itself, so `__FILE__`, uncaught exceptions, exit
// codes and shutdown functions are PHP's own. On `snippet` it includes snippets one after
// another at the top level, so variables, functions and classes persist.
//
// The one-shot path runs in a closure: it leaves no variable, function or class behind.
if ((static function (): bool {
    $folder = getenv('CI_RUNNER_KERNEL_CONTROL');
    if ($folder === false || $folder === '') {
        return false;
    }
    $text = static fn (string $word): string => (string) hex2bin($word);
    $env = getenv();
    unset($env['CI_RUNNER_KERNEL_CONTROL']);
    $cwd = getcwd();
    $restore = static function () use ($env, $cwd): void {
        foreach (array_keys(getenv()) as $key) {
            if (!array_key_exists($key, $env)) {
                putenv($key);
                unset($_SERVER[$key]);
            }
        }
        foreach ($env as $key => $value) {
            if (getenv($key) !== $value) {
                putenv("$key=$value");
            }
        }
        if (getcwd() !== $cwd) {
            chdir($cwd);
        }
    };
    // 'e': close-on-exec, so a program's child never holds the channel.
    $inbox = fopen("$folder/in", 'rbe');
    $outbox = fopen("$folder/out", 'wbe');
    $receive = static function () use ($inbox): ?array {
        for (;;) {
            $line = fgets($inbox);
            if ($line !== false) {
                return explode(' ', rtrim($line, "\n"));
            }
            if (feof($inbox)) {
                return null;
            }
            // A signal interrupted the read.
        }
    };
    $tell = static function (string ...$words) use ($outbox): void {
        fwrite($outbox, implode(' ', $words) . "\n");
        fflush($outbox);
    };

    $first = $receive();
    if ($first === null || $first[0] !== 'preload') {
        exit(70);
    }
    foreach (array_map($text, array_slice($first, 1)) as $file) {
        if (!is_file($file) || !is_readable($file)) {
            $tell('note', bin2hex("cannot preload $file: no such readable file"));
            continue;
        }
        try {
            require_once $file;
        } catch (\Throwable $e) {
            $tell('note', bin2hex("cannot preload $file: " . get_class($e) . ': ' . $e->getMessage()));
        }
    }
    // An output buffer a preload opened would hold its output into the program's time.
    while (ob_get_level() > 0) {
        ob_end_clean();
    }
    $restore();
    $interruptible = function_exists('pcntl_async_signals') && function_exists('pcntl_signal');
    $tell(...($interruptible ? ['ready', 'interruptible'] : ['ready']));

    $message = $receive();
    if ($message === null) {
        exit(0);
    }
    [$verb, $words] = [$message[0], array_slice($message, 1)];
    if ($verb === 'run') {
        fclose($inbox);
        fclose($outbox);
        if (($words[0] ?? '') === 'null' && class_exists('FFI', false)) {
            // PHP has no dup2 of its own; FFI (enabled for the CLI by default) reaches libc's.
            try {
                $libc = \FFI::cdef('int open(const char *path, int flags); int dup2(int from, int to); int close(int fd);');
                $null = $libc->open('/dev/null', 0);
                if ($null >= 0) {
                    $libc->dup2($null, 0);
                    $libc->close($null);
                }
            } catch (\Throwable $e) {
                // fd 0 stays the empty file the wrapper opened: reading it still gives nothing.
            }
        }
        $argv = array_merge([$GLOBALS['argv'][0]], array_map($text, array_slice($words, 1)));
        $GLOBALS['argv'] = $argv;
        $GLOBALS['argc'] = count($argv);
        $_SERVER['argv'] = $argv;
        $_SERVER['argc'] = count($argv);
        $now = microtime(true);
        $_SERVER['REQUEST_TIME_FLOAT'] = $now;
        $_SERVER['REQUEST_TIME'] = (int) $now;
        $restore();
        return false;
    }
    if ($verb !== 'snippet') {
        exit(70);
    }

    // Session: the snippets are included at the top level of this file (below), the only place
    // whose scope is the global one. The state they need lives in this class, declared only here.
    final class CiRunnerKernel
    {
        public static $receive;
        public static $tell;
        public static $snippet = null;
        public static bool $running = false;
        public static bool $interrupted = false;

        public static function next(): bool
        {
            if (self::$snippet === null) {
                $message = (self::$receive)();
                if ($message === null || $message[0] !== 'snippet' || !isset($message[1])) {
                    return false;
                }
                self::$snippet = (string) hex2bin($message[1]);
            }
            // fd 0 is the job's stdin file, which the wrapper writes anew before each snippet
            // (in place): each snippet reads it from its start.
            try {
                if (defined('STDIN')) {
                    rewind(STDIN);
                }
            } catch (\Throwable $e) {
                // A snippet closed it: nothing to rewind.
            }
            self::$interrupted = false;
            self::$running = true;
            return true;
        }

        public static function finished(?\Throwable $error): void
        {
            self::$running = false;
            if (self::$interrupted) {
                // Where the snippet was when the handler threw: its first frame not in here.
                $at = ['file' => self::$snippet, 'line' => 0];
                foreach ($error ? $error->getTrace() : [] as $frame) {
                    if (isset($frame['file']) && $frame['file'] !== __FILE__) {
                        $at = $frame;
                        break;
                    }
                }
                self::fatal('Fatal error', 'Interrupted', $at['file'], $at['line']);
                [$status, $how] = [130, 'interrupted'];
            } elseif ($error instanceof \ParseError) {
                self::fatal('Parse error', $error->getMessage(), $error->getFile(), $error->getLine());
                [$status, $how] = [255, 'error'];
            } elseif ($error !== null) {
                $message = 'Uncaught ' . self::describe($error) . "\n  thrown";
                self::fatal('Fatal error', $message, $error->getFile(), $error->getLine());
                [$status, $how] = [255, 'error'];
            } else {
                [$status, $how] = [0, 'ok'];
            }
            self::$snippet = null;
            while (ob_get_level() > 0) {
                ob_end_flush();
            }
            flush();
            fflush(STDOUT);
            fflush(STDERR);
            (self::$tell)('done', (string) $status, $how);
        }

        public static function interrupt(): void
        {
            if (self::$running) {
                self::$interrupted = true;
                throw new \Error('Interrupted');
            }
        }

        // As PHP reports an error that ends a script (the CLI's log line on stderr, and the
        // display line on stdout when display_errors is on).
        private static function fatal(string $kind, string $message, string $file, int $line): void
        {
            if (ini_get('log_errors') && in_array(ini_get('error_log'), ['', false], true)) {
                fwrite(STDERR, "PHP $kind:  $message in $file on line $line" . PHP_EOL);
            }
            $display = strtolower((string) ini_get('display_errors'));
            if (in_array($display, ['1', 'on', 'yes', 'true', 'stdout', 'stderr'], true)) {
                $out = $display === 'stderr' ? STDERR : STDOUT;
                fwrite($out, PHP_EOL . "$kind: $message in $file on line $line" . PHP_EOL);
            }
        }

        // (string) $error without the kernel's own frames (the include that ran the snippet).
        private static function describe(\Throwable $error): string
        {
            $lines = [];
            $frame = 0;
            foreach (explode("\n", (string) $error) as $line) {
                if (preg_match('/^#\d+ (.*)$/', $line, $m)) {
                    if (str_starts_with($m[1], __FILE__ . '(')) {
                        continue;
                    }
                    $line = '#' . $frame++ . ' ' . $m[1];
                } elseif (str_starts_with($line, 'Stack trace:')) {
                    $frame = 0;
                }
                $lines[] = $line;
            }
            return implode("\n", $lines);
        }
    }

    CiRunnerKernel::$receive = $receive;
    CiRunnerKernel::$tell = $tell;
    CiRunnerKernel::$snippet = $text($words[0] ?? '');
    $restore();
    $GLOBALS['argv'] = [];
    $GLOBALS['argc'] = 0;
    if ($interruptible) {
        pcntl_async_signals(true);
        pcntl_signal(SIGINT, static fn () => CiRunnerKernel::interrupt());
    }
    return true;
})()) {
    while (CiRunnerKernel::next()) {
        try {
            include CiRunnerKernel::$snippet;
            CiRunnerKernel::finished(null);
        } catch (\Throwable $__ci_runner_error) {
            CiRunnerKernel::finished($__ci_runner_error);
        }
        unset($__ci_runner_error);
    }
    // The wrapper is gone: end as PHP ends, running the snippets' shutdown functions.
    exit(0);
}
