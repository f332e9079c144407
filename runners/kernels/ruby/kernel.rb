# ci-runner's Ruby kernel (the protocol is in runners/kernels/README.md).
#
# The wrapper starts `ruby <this file> /job/main.rb`. Ruby reads its main script before it
# loads `-r` libraries, so this file is the main script: it preloads libraries, says `ready` and
# waits. On `run` it sets `$0`, ARGV, environment, working directory and stdin as a fresh
# interpreter has them and evaluates /job/main.rb in TOPLEVEL_BINDING under the script's name:
# `__FILE__ == $0`, top-level locals are the program's own, `exit` and `at_exit` are Ruby's. An
# uncaught exception is re-raised with the kernel's frames cut from its backtrace, so Ruby prints
# it as it prints a script's; a script that does not parse is handed to a fresh `ruby` (exec),
# which reports the error in its own words. On `snippet` it evaluates snippets in
# TOPLEVEL_BINDING until the wrapper closes the channel, so top-level locals, methods and
# constants persist.
#
# Everything runs inside a lambda: the top level of this file defines no local, constant,
# method or instance variable the program could see. (Its blocks share its locals: a block
# must not reuse the name of one, such as `text`.)
-> do
  folder = ENV['CI_RUNNER_KERNEL_CONTROL']
  script = ARGV[0]
  abort 'ci-runner kernel: no control channel' if folder.nil? || folder.empty? || script.nil?

  text = ->(word) { [word].pack('H*').force_encoding(Encoding::UTF_8) }
  hex = ->(string) { string.to_s.b.unpack1('H*') }
  startup_env = ENV.to_h.reject { |key, _| key == 'CI_RUNNER_KERNEL_CONTROL' }
  startup_cwd = Dir.pwd
  restore = lambda do
    ENV.keys.each { |key| ENV.delete(key) unless startup_env.key?(key) }
    startup_env.each { |key, value| ENV[key] = value unless ENV[key] == value }
    Dir.chdir(startup_cwd) unless Dir.pwd == startup_cwd
  end

  inbox = File.open(File.join(folder, 'in'), 'rb')
  outbox = File.open(File.join(folder, 'out'), 'wb')
  outbox.sync = true
  # Words are separated by exactly one space; an empty word is an empty argument.
  receive = -> { inbox.gets&.chomp&.split(/ /, -1) }
  tell = ->(*words) { outbox.write("#{words.join(' ')}\n") }

  first = receive.call
  exit!(70) unless first && first[0] == 'preload'
  first.drop(1).map(&text).each do |name|
    require name
  rescue Exception => e # rubocop:disable Lint/RescueException -- a preload must not kill the kernel
    tell.call('note', hex.call("cannot preload #{name}: #{e.class}: #{e.message}"))
  end
  # What a preload wrote must reach the pipes now, where the wrapper discards it, not from
  # Ruby's buffers in the program's time.
  [$stdout, $stderr].each(&:flush)
  restore.call
  tell.call('ready', 'interruptible')

  verb, *words = receive.call
  exit!(0) if verb.nil?

  # Prints an exception as Ruby prints one that ends a script: the frames below the program's
  # (this file's, and the `eval` that ran it) are cut.
  cut = lambda do |error, depth|
    backtrace = error.backtrace
    error.set_backtrace(backtrace[0, [backtrace.size - depth - 1, 0].max]) if backtrace
    error
  end

  if verb == 'run'
    inbox.close
    outbox.close
    if words[0] == 'null'
      # IO.new has no path, so STDIN keeps its own (`#<IO:<STDIN>>`) across the reopen.
      null = IO.new(IO.sysopen(File::NULL, 'r'), 'r')
      $stdin.reopen(null)
      null.close
    end
    args = words.drop(1).map(&text)
    $0 = script
    ARGV.replace(args)
    restore.call
    source = File.binread(script).force_encoding(Encoding::UTF_8)
    ending = source.b =~ /^__END__(\r?\n|\z)/
    if ending
      data = File.open(script, 'r')
      data.seek(ending + Regexp.last_match(0).bytesize)
      Object.const_set(:DATA, data)
    end
    # Keeps the program's source lines, so error_highlight can point into them as it does in
    # a script.
    RubyVM.keep_script_lines = true if RubyVM.respond_to?(:keep_script_lines=)
    depth = caller(0).size
    begin
      eval(source, TOPLEVEL_BINDING, script, 1) # rubocop:disable Security/Eval
    rescue SystemExit
      raise
    rescue SyntaxError => e
      raise unless cut.call(e, depth).backtrace.empty?
      # Nothing ran: a fresh interpreter says what is wrong in its own words.
      exec('ruby', script, *args)
    rescue Exception => e # rubocop:disable Lint/RescueException
      raise cut.call(e, depth)
    end
    next
  end
  exit!(70) unless verb == 'snippet'

  # Session: snippets in TOPLEVEL_BINDING, one after another, until the channel closes.
  ARGV.clear
  restore.call
  handler = 'DEFAULT' # Ruby's own: SIGINT raises Interrupt in the main thread
  trap('INT', 'IGNORE')
  report = lambda do |error, depth|
    cut.call(error, depth)
    # A snippet that does not parse has no frame of its own: its message says where.
    shown = error.backtrace&.empty? ? "#{error.message}\n" : error.full_message(highlight: false, order: :top)
    $stderr.write(shown)
  end
  run_snippet = lambda do |path|
    # fd 0 is the job's stdin file, which the wrapper writes anew before each snippet (in
    # place): each snippet reads it from its start.
    begin
      STDIN.rewind
    rescue StandardError
      nil
    end
    depth = caller(0).size
    begin
      begin
        trap('INT', handler)
        source = File.binread(path).force_encoding(Encoding::UTF_8)
        eval(source, TOPLEVEL_BINDING, path, 1) # rubocop:disable Security/Eval
        [0, 'ok']
      ensure
        handler = trap('INT', 'IGNORE')
      end
    rescue SystemExit => e
      [e.status, 'exit']
    rescue Interrupt => e
      report.call(e, depth)
      [130, 'interrupted']
    rescue Exception => e # rubocop:disable Lint/RescueException
      report.call(e, depth)
      [1, 'error']
    end
  end
  path = text.call(words[0].to_s)
  while path
    status, how = run_snippet.call(path)
    trap('INT', 'IGNORE')
    [$stdout, $stderr, STDOUT, STDERR].uniq.each do |stream|
      stream.flush
    rescue StandardError
      nil
    end
    tell.call('done', status.to_s, how)
    verb, word = receive.call
    path = verb == 'snippet' && word ? text.call(word) : nil
  end
  # The wrapper is gone: end as Ruby ends, running the snippets' at_exit handlers.
  exit 0
end.call
