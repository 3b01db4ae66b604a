package StreamMod::Test;

# Test harness for ngx_stream_mod: runs NGINX with the module and the Stream
# API emulator (t/emu/stream-emu.pl) in a temporary directory, talks HTTP
# to them byte by byte, mints tokens and reads what reached "Stream".
# Modeled on NGINX's own Test::Nginx, much smaller.

use strict;
use warnings;

use Exporter qw(import);
use Test::More ();
use IO::Socket::INET;
use IO::Select;
use POSIX qw(:sys_wait_h);
use Fcntl qw(:flock O_RDWR O_CREAT);
use Time::HiRes qw(time sleep);
use File::Temp qw(tempdir);
use File::Spec;
use File::Basename qw(dirname);
use JSON::PP;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64 decode_base64);
use Scalar::Util qw(weaken);
use Cwd qw(abs_path);

our @EXPORT    = qw(mint_jwt b64url);
our @EXPORT_OK = qw(mint_jwt b64url b64url_decode api_error api_error_body
                    api_error_ok);

# t/lib/StreamMod/Test.pm -> repository root
my $REPO = File::Spec->catdir(dirname(File::Spec->rel2abs(__FILE__)), (File::Spec->updir) x 3);
$REPO = abs_path($REPO) // $REPO;

my @INSTANCES;    # weak refs, stopped from END
my %USED_PORTS;

# --------------------------------------------------------------------------
# construction and accessors

sub new {
    my ($class, %o) = @_;
    my $keep = $ENV{STREAM_MOD_KEEP} ? 1 : 0;
    my $dir  = tempdir('stream-mod-XXXXXX', TMPDIR => 1, CLEANUP => !$keep);
    # NGINX workers drop root privileges and must reach the temp paths
    chmod 0755, $dir if $> == 0;
    my $self = bless {
        dir        => $dir,
        repo       => $REPO,
        owner      => $$,
        keep       => $keep,
        api_key    => $o{api_key} // 'k3y-test',
        api_secret => $o{api_secret} // 's3cr3t-test-secret-0123456789abcdef',
        so         => $ENV{STREAM_MOD_SO}
          // File::Spec->catfile($REPO, qw(build nginx objs ngx_http_stream_mod_module.so)),
        nginx      => $ENV{STREAM_MOD_NGINX} // '/usr/sbin/nginx',
        # STREAM_MOD_VALGRIND=1: one process (master_process off);
        # STREAM_MOD_VALGRIND=master: master and workers, all under valgrind
        valgrind   => !$ENV{STREAM_MOD_VALGRIND} ? ''
                    : $ENV{STREAM_MOD_VALGRIND} eq 'master' ? 'master' : 1,
        allow_log  => [],
        log_offset => 0,
        ntest      => 0,
    }, $class;
    $self->{port}     = $o{port}     // _free_port();
    $self->{emu_port} = $o{emu_port} // _free_port();
    $self->{record}   = "$dir/upstream.jsonl";
    $self->{control}  = "$dir/emu-control.json";
    $self->write_file('secret', $self->{api_secret} . "\n", 0600);
    Test::More::diag("StreamMod::Test: keeping $dir") if $keep;
    push @INSTANCES, $self;
    weaken($INSTANCES[-1]);
    return $self;
}

sub dir         { $_[0]{dir} }
sub port        { $_[0]{port} }
sub emu_port    { $_[0]{emu_port} }
sub api_key     { $_[0]{api_key} }
sub api_secret  { $_[0]{api_secret} }
sub secret_file { "$_[0]{dir}/secret" }
sub repo        { $_[0]{repo} }
sub so_path     { $_[0]{so} }
sub nginx_bin   { $_[0]{nginx} }
sub record_file { $_[0]{record} }
sub valgrind    { $_[0]{valgrind} }

sub _free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1, ReuseAddr => 1,
        ) or die "cannot find a free port: $@";
        my $p = $s->sockport;
        close $s;
        next if $USED_PORTS{$p}++;
        return $p;
    }
    die "cannot find a free port";
}

sub write_file {
    my ($self, $name, $content, $mode) = @_;
    my $path = File::Spec->file_name_is_absolute($name) ? $name : "$self->{dir}/$name";
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $content;
    close $fh or die "$path: $!";
    chmod $mode, $path if defined $mode;
    return $path;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    return <$fh> // '';
}

sub error_log  { _slurp("$_[0]{dir}/error.log") }
sub access_log { _slurp("$_[0]{dir}/access.log") }

# Lines of error.log matching one of these are not reported by stop().
sub allow_log {
    my ($self, @re) = @_;
    push @{ $self->{allow_log} }, @re;
    return $self;
}

# --------------------------------------------------------------------------
# configuration

sub _subst {
    my ($self, $text) = @_;
    my %v = (
        PORT        => $self->{port},
        EMU_PORT    => $self->{emu_port},
        DIR         => $self->{dir},
        API_KEY     => $self->{api_key},
        SECRET_FILE => $self->secret_file,
    );
    $text =~ s/%%(PORT|EMU_PORT|DIR|API_KEY|SECRET_FILE)%%/$v{$1}/g;
    return $text;
}

# Full nginx.conf text: main-context lines + the test's text.
# Options: workers => N, main => "extra main-context lines", error_log => PATH
sub config_text {
    my ($self, $text, %o) = @_;
    my $dir   = $self->{dir};
    my $level = $ENV{STREAM_MOD_ERROR_LOG_LEVEL} // 'notice';
    my $elog  = $o{error_log} // "$dir/error.log";
    my $head  = "load_module $self->{so};\n"
      . "pid $dir/nginx.pid;\n"
      . "error_log $elog $level;\n";
    if ($self->{valgrind} eq 'master') {
        $head .= "daemon off;\nmaster_process on;\n";
    } elsif ($self->{valgrind}) {
        $head .= "daemon off;\nmaster_process off;\n";
    } else {
        $head .= "daemon on;\nmaster_process on;\n";
    }
    $head .= "worker_processes " . ($o{workers} // 1) . ";\n";
    $head .= "$o{main}\n" if defined $o{main};
    $head .= "events { worker_connections 1024; }\n\n";
    return $self->_subst($head . $text);
}

sub write_config {
    my ($self, $text, %o) = @_;
    $self->write_file('nginx.conf', $self->config_text($text, %o));
    $self->{config_written} = 1;
    return $self;
}

sub http_preamble {
    my ($self) = @_;
    my $d = $self->{dir};
    return join '', map { "    $_\n" }
      "access_log $d/access.log;",
      "client_body_temp_path $d/client_body_temp;",
      "proxy_temp_path $d/proxy_temp;",
      "fastcgi_temp_path $d/fastcgi_temp;",
      "uwsgi_temp_path $d/uwsgi_temp;",
      "scgi_temp_path $d/scgi_temp;",
      "default_type application/octet-stream;";
}

# --------------------------------------------------------------------------
# Stream's APIError, as the gateway answers it

# decoded, for is_deeply against $r->{json}
sub api_error {
    my ($status, $code, $msg) = @_;
    return { code => $code, message => $msg, StatusCode => $status,
        duration => '0.00ms', more_info => '', details => [] };
}

# byte for byte, as the gateway writes it
sub api_error_body {
    my ($status, $code, $msg) = @_;
    (my $m = $msg) =~ s/(["\\])/\\$1/g;
    return qq({"code":$code,"message":"$m","StatusCode":$status,)
      . qq("duration":"0.00ms","more_info":"","details":[]});
}

# status, Content-Type and exact body; with a qr// message, the body's
# shape and the message by pattern
sub api_error_ok {
    my ($r, $name, $status, $code, $message) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    Test::More::is($r->{status}, $status, "$name: status $status");
    Test::More::is_deeply($r->{headers}{'content-type'},
        ['application/json'], "$name: Content-Type application/json");

    if (ref $message) {
        Test::More::like($r->{body},
            qr/\A\{"code":\Q$code\E,"message":"(?:[^"\\]|\\.)*","StatusCode":\Q$status\E,"duration":"0\.00ms","more_info":"","details":\[\]\}\z/,
            "$name: APIError shape, code $code");
        Test::More::like(ref $r->{json} eq 'HASH' ? $r->{json}{message} : undef,
            $message, "$name: message");
    } else {
        Test::More::is($r->{body}, api_error_body($status, $code, $message),
            "$name: APIError code $code, \"$message\"");
    }
}

# Standard config: the two stream_mod locations in front of the emulator.
# Options: http => '...', server => '...', location => '...' snippets.
sub default_config {
    my ($self, %o) = @_;
    my $http = $o{http}     // '';
    my $srv  = $o{server}   // '';
    my $loc  = $o{location} // '';
    return <<"CONF";
http {
@{[ $self->http_preamble ]}
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

$http

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

@{[ $self->gateway_server('localhost', $loc, $srv) ]}
}
CONF
}

# One virtual server (on the one port, chosen by Host) with the two
# gateway locations of default_config in front of the emulator: $location
# goes into both locations, $server into the server block.
sub gateway_server {
    my ($self, $name, $location, $server) = @_;
    $location //= '';
    $server   //= '';
    my $locs = join '', map { <<"LOC" } qw(moderation calls);
        location /$_/ {
            stream_mod on;
$location
            proxy_pass http://stream_api;
        }
LOC
    return <<"SRV";
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name $name;
$server
$locs
    }
SRV
}

sub write_policy {
    my ($self, $policy) = @_;
    my $text = ref $policy ? JSON::PP->new->canonical->pretty->encode($policy) : $policy;
    return $self->write_file('policy.json', $text);
}

sub _need_module {
    my ($self) = @_;
    Test::More::BAIL_OUT("module not built: run tools/build (no $self->{so})") unless -f $self->{so};
}

# --------------------------------------------------------------------------
# processes

# fork/exec with stdio redirected to files; returns the pid
sub _spawn {
    my ($cmd, %o) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $o{stdout} // '/dev/null';
        if ($o{stderr_to_stdout}) {
            open STDERR, '>&', \*STDOUT;
        } else {
            open STDERR, '>>', $o{stderr} // '/dev/null';
        }
        { no warnings 'exec'; exec { $cmd->[0] } @$cmd; }
        print STDERR "exec $cmd->[0]: $!\n";
        POSIX::_exit(127);
    }
    return $pid;
}

sub _alive {
    my ($pid) = @_;
    return 0 unless $pid && kill 0, $pid;
    if (open my $fh, '<', "/proc/$pid/stat") {    # a zombie is dead too
        my $st = <$fh> // '';
        return 0 if $st =~ /\)\s+Z\s/;
    }
    return 1;
}

sub _port_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# wait until $cond->() is true; false on timeout or when $abort->() is true
sub _wait_until {
    my ($timeout, $cond, $abort) = @_;
    my $end = time + $timeout;
    while (time < $end) {
        return 1 if $cond->();
        return 0 if $abort && $abort->();
        sleep 0.05;
    }
    return $cond->() ? 1 : 0;
}

sub _reaped {    # our child has exited (reaps it)
    my ($self, $key) = @_;
    my $pid = $self->{$key} or return 1;
    my $r = waitpid($pid, WNOHANG);
    if ($r == $pid || $r == -1) {
        $self->{"${key}_status"} = $?;
        delete $self->{$key};
        return 1;
    }
    return 0;
}

sub run_emulator_only {
    my ($self) = @_;
    $self->_start_emulator;
    return $self;
}

sub run {
    my ($self) = @_;
    $self->_need_module;
    $self->write_config($self->default_config) unless $self->{config_written};
    $self->_start_emulator unless $self->{emu_pid};
    $self->_start_nginx;
    return $self;
}

# the emulator re-reads the API secret file when it starts
sub restart_emulator {
    my ($self) = @_;
    $self->_stop_emulator;
    $self->_start_emulator;
    return $self;
}

# the text of a file, '' when it does not exist
sub slurp { shift; _slurp(@_) }

sub _start_emulator {
    my ($self) = @_;
    my $d = $self->{dir};
    my @cmd = (
        $^X, "$self->{repo}/t/emu/stream-emu.pl",
        '--listen',          "127.0.0.1:$self->{emu_port}",
        '--api-key',         $self->{api_key},
        '--api-secret-file', $self->secret_file,
        '--record',          $self->{record},
        '--pidfile',         "$d/emu.pid",
        '--control',         $self->{control},
    );
    $self->{emu_pid} = _spawn(\@cmd, stdout => "$d/emu.out", stderr => "$d/emu.err");
    my $ok = _wait_until(10, sub { _port_open($self->{emu_port}) }, sub { $self->_reaped('emu_pid') });
    die "stream-emu did not start on port $self->{emu_port}:\n" . _slurp("$d/emu.err") unless $ok;
}

sub _start_nginx {
    my ($self) = @_;
    my $d = $self->{dir};
    unlink "$d/nginx.pid";
    my @ngx = ($self->{nginx}, '-p', "$d/", '-c', "$d/nginx.conf", '-e', "$d/error.log");
    if ($self->{valgrind}) {
        my @vg = (
            'valgrind', '--tool=memcheck', '--leak-check=full', '--show-leak-kinds=definite',
            '--errors-for-leak-kinds=definite', '--error-exitcode=99',
            "--log-file=$d/valgrind.%p.log", '--num-callers=30',
        );
        my $supp = "$self->{repo}/t/valgrind.supp";
        push @vg, "--suppressions=$supp" if -f $supp;
        $self->{vg_pid} = _spawn([ @vg, @ngx ], stdout => "$d/nginx.stderr", stderr_to_stdout => 1);
        my $ok = _wait_until(60, sub { _port_open($self->{port}) && -s "$d/nginx.pid" },
            sub { $self->_reaped('vg_pid') });
        die "nginx (valgrind) did not start:\n" . _slurp("$d/nginx.stderr") . $self->error_log unless $ok;
        $self->{nginx_running} = 1;
        return;
    }
    my $pid = _spawn(\@ngx, stdout => "$d/nginx.stderr", stderr_to_stdout => 1);
    waitpid($pid, 0);
    if ($? != 0) {
        die "nginx failed to start (exit " . ($? >> 8) . "):\n" . _slurp("$d/nginx.stderr") . $self->error_log;
    }
    $self->{nginx_running} = 1;
    my $ok = _wait_until(10, sub { -s "$d/nginx.pid" && _port_open($self->{port}) });
    die "nginx did not start listening on port $self->{port}:\n" . $self->error_log unless $ok;
}

sub master_pid {
    my ($self) = @_;
    my $pid = _slurp("$self->{dir}/nginx.pid");
    $pid =~ s/\s+//g;
    return $pid =~ /\A\d+\z/ ? $pid : undef;
}

sub worker_pids {
    my ($self) = @_;
    my $m = $self->master_pid or return ();
    my $out = `ps --ppid $m -o pid= 2>/dev/null`;
    return grep { /\A\d+\z/ } map { s/\s+//gr } split /\n/, $out;
}

sub stop {
    my ($self) = @_;
    return unless $self->{owner} == $$;
    $self->_stop_nginx;
    $self->_stop_emulator;
    $self->_check_logs;
    return $self;
}

sub _stop_nginx {
    my ($self) = @_;
    return unless $self->{nginx_running};
    delete $self->{nginx_running};
    if ($self->{valgrind}) {
        if (my $pid = $self->{vg_pid}) {
            # A single-process NGINX can take the signal just before it
            # blocks in epoll_wait and sleep on: send it again until it exits.
            my $ok = 0;
            for (1 .. 30) {
                kill 'QUIT', $pid;
                last if $ok = _wait_until(2, sub { $self->_reaped('vg_pid') });
            }
            unless ($ok) {
                kill 'KILL', $pid;
                waitpid($pid, 0);
                delete $self->{vg_pid};
                Test::More::ok(0, "valgrind: nginx did not exit within 60 s after SIGQUIT");
            }
        }
        return;
    }
    my $pid = $self->master_pid or return;
    for my $sig (qw(QUIT TERM KILL)) {
        last unless _alive($pid);
        kill $sig, $pid;
        last if _wait_until($sig eq 'QUIT' ? 10 : 5, sub { !_alive($pid) });
        Test::More::diag("nginx master $pid did not exit after SIG$sig");
    }
}

sub _stop_emulator {
    my ($self) = @_;
    my $pid = $self->{emu_pid} or return;
    kill 'TERM', $pid;
    unless (_wait_until(5, sub { $self->_reaped('emu_pid') })) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        delete $self->{emu_pid};
    }
}

sub _check_logs {
    my ($self) = @_;
    my $log = $self->error_log;
    my $new = length($log) >= $self->{log_offset} ? substr($log, $self->{log_offset}) : $log;
    $self->{log_offset} = length $log;
    my @bad;
    for my $line (split /\n/, $new) {
        next unless $line =~ /\[(?:alert|emerg|crit)\]|AddressSanitizer|LeakSanitizer|runtime error:/;
        next if grep { $line =~ $_ } @{ $self->{allow_log} };
        push @bad, $line;
    }
    if (@bad) {
        Test::More::ok(0, "error.log has no alert/emerg/crit/sanitizer lines")
          or Test::More::diag(join "\n", @bad[ 0 .. ($#bad < 19 ? $#bad : 19) ]);
    }
    my $emu = _slurp("$self->{dir}/emu.err");
    if ($emu =~ /internal error/) {
        Test::More::ok(0, "stream-emu had no internal errors") or Test::More::diag($emu);
    }
    for my $f (sort glob "$self->{dir}/valgrind.*.log") {
        next if $self->{vg_checked}{$f}++;
        my $text = _slurp($f);
        my ($errors) = $text =~ /ERROR SUMMARY: ([\d,]+) errors/;
        my ($lost)   = $text =~ /definitely lost: ([\d,]+) bytes/;
        $_ = defined $_ ? ($_ =~ tr/,//dr) : 0 for $errors, $lost;
        if ($errors > 0 || $lost > 0) {
            my @lines = grep { /\S/ } split /\n/, $text;
            my $excerpt = join "\n", grep { defined } @lines[ 0 .. 199 ];
            Test::More::ok(0, "valgrind: $f reports $errors errors, $lost bytes definitely lost")
              or Test::More::diag($excerpt);
        }
    }
}

# Reload with a new config (optional); true once the old workers are gone
# and new ones run, false if the reload failed or timed out.
sub reload {
    my ($self, $text, %o) = @_;
    $self->write_config($text, %o) if defined $text;
    my $master = $self->master_pid or return 0;
    if ($self->{valgrind} && $self->{valgrind} ne 'master') {
        # NGINX cannot serve after a reload with master_process off (the new
        # cycle's connections are never set up), so check the config like a
        # reload would and restart; state in shared memory does not survive.
        my $d = $self->{dir};
        my $pid = _spawn([ $self->{nginx}, '-t', '-q', '-p', "$d/", '-c', "$d/nginx.conf", '-e', "$d/error.log" ],
            stdout => "$d/nginx.stderr", stderr_to_stdout => 1);
        waitpid($pid, 0);
        return 0 if $?;
        $self->_stop_nginx;
        $self->_start_nginx;
        return 1;
    }
    my $off = length $self->error_log;
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $master or return 0;
    my $failed = sub {
        my $log = $self->error_log;
        return substr($log, $off) =~ /\[(?:emerg|alert)\]/;
    };
    my $ok = _wait_until($self->{valgrind} ? 60 : 10, sub {
        my @now = $self->worker_pids;
        @now && !grep { $old{$_} } @now;
    }, $failed);
    return $ok && !$failed->() ? 1 : 0;
}

# nginx -t on a config text; returns (exit code, combined output)
sub nginx_test_config {
    my ($self, $text, %o) = @_;
    $self->_need_module;
    my $d = $self->{dir};
    my $n = ++$self->{ntest};
    my $file = "$d/test-$n.conf";
    $self->write_file($file, $self->config_text($text, %o, error_log => "$d/error-test.log"));
    my $out = "$d/test-$n.out";
    my $pid = _spawn([ $self->{nginx}, '-t', '-p', "$d/", '-c', $file, '-e', "$d/error-test.log" ],
        stdout => $out, stderr_to_stdout => 1);
    waitpid($pid, 0);
    return ($? >> 8, _slurp($out));
}

END {
    for my $t (grep { defined } @INSTANCES) {
        $t->stop if $t->{owner} == $$;
    }
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{owner} && $self->{owner} == $$;
}

# --------------------------------------------------------------------------
# HTTP client

# $t->request($method, $path, headers => [n => v, ...], body => $raw,
#   json => $ref, token => $jwt, port => N, host => 'h', http_version => '1.0',
#   timeout => S)
sub request {
    my ($self, $method, $path, %o) = @_;
    my @h = @{ $o{headers} || [] };
    my $body = $o{body};
    my %have;
    for (my $i = 0; $i < @h; $i += 2) { $have{ lc $h[$i] } = 1 }
    if (exists $o{json}) {
        $body = JSON::PP->new->utf8->canonical->allow_nonref->encode($o{json});
        push @h, 'Content-Type' => 'application/json' unless $have{'content-type'};
    }
    push @h, Authorization => "Bearer $o{token}" if defined $o{token};
    utf8::encode($body) if defined $body && utf8::is_utf8($body);
    my $port = $o{port} // $self->{port};
    my $req = "$method $path HTTP/" . ($o{http_version} // '1.1') . "\r\n";
    $req .= "Host: " . ($o{host} // "127.0.0.1:$port") . "\r\n" unless $have{host};
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    if (!$have{'content-length'} && !$have{'transfer-encoding'}) {
        if (defined $body) {
            $req .= "Content-Length: " . length($body) . "\r\n";
        } elsif ($method =~ /\A(?:POST|PUT|PATCH)\z/) {
            $req .= "Content-Length: 0\r\n";
        }
    }
    $req .= "Connection: close\r\n" unless $have{connection};
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $self->raw_request($req, %o, method => $method);
}

# the same, sent to the emulator
sub emu_request {
    my ($self, $method, $path, %o) = @_;
    return $self->request($method, $path, port => $self->{emu_port}, %o);
}

# Send exact bytes; returns the parsed response ({status, reason,
# http_version, headers => {lc name => [values]}, header_list, body, json,
# raw}); status is undef when nothing parsable came back (error says why).
# With all => 1 returns the list of every response read until EOF.
sub raw_request {
    my ($self, $bytes, %o) = @_;
    my $port = $o{port} // $self->{port};
    my $timeout = $o{timeout} // 10;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => $timeout);
    return { status => undef, error => "connect: $@", raw => '' } unless $s;
    binmode $s;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $w = syswrite($s, $bytes, length($bytes) - $off, $off);
        last unless $w;
        $off += $w;
        sleep $o{write_delay} if $o{write_delay} && $off < length $bytes;
    }
    shutdown($s, 1) if $o{half_close};
    my $buf = '';
    my $eof = 0;
    my $sel = IO::Select->new($s);
    my $end = time + $timeout;
    my $method = $o{method} // (($bytes =~ /\A(\S+)/)[0] // 'GET');
    my @res;
    while (1) {
        if (!$o{all}) {
            my ($res) = _parse_responses($buf, $method, $eof, 1);
            if ($res) { close $s; return $res }
        }
        last if $eof;
        my $left = $end - time;
        last if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        next if !defined $n && $!{EINTR};
        $eof = 1 unless $n;
    }
    close $s;
    my @all = _parse_responses($buf, $method, $eof, 0);
    return @all if $o{all};
    return $all[0] if @all && defined $all[0]{status};
    return { status => undef, error => ($eof ? 'unparsable response' : 'timeout'), raw => $buf };
}

# Parses as many complete responses as $buf holds (the last one may end at
# EOF). With $first only, returns the first complete one or nothing.
sub _parse_responses {
    my ($buf, $method, $eof, $first) = @_;
    my @out;
    while (length $buf) {
        my $hend = index($buf, "\r\n\r\n");
        last if $hend < 0;
        my $head = substr($buf, 0, $hend);
        my @lines = split /\r\n/, $head;
        my ($ver, $status, $reason) = (shift(@lines) // '') =~ m{\AHTTP/(\d\.\d) (\d{3})(?: (.*))?\z}
          or do { push @out, { status => undef, error => 'bad status line', raw => $buf } unless $first; last };
        my (%h, @list);
        for (@lines) {
            my ($n, $v) = /\A([^:]+):[ \t]*(.*?)[ \t]*\z/ or next;
            push @{ $h{ lc $n } }, $v;
            push @list, [ $n, $v ];
        }
        my $rest = substr($buf, $hend + 4);
        my ($body, $used);
        if ($status =~ /\A1/ ) {    # interim response: skip it
            $buf = $rest;
            next;
        }
        if ($method eq 'HEAD' || $status == 204 || $status == 304) {
            ($body, $used) = ('', 0);
        } elsif ($h{'transfer-encoding'} && $h{'transfer-encoding'}[0] =~ /chunked/i) {
            ($body, $used) = _dechunk($rest);
            if (!defined $body) {
                last unless $eof;
                ($body, $used) = ($rest, length $rest);    # truncated: keep what came
                $h{'x-test-truncated'} = [1];
            }
        } elsif (defined $h{'content-length'}) {
            my $cl = $h{'content-length'}[0];
            if (length $rest < $cl) {
                last unless $eof;
                $h{'x-test-truncated'} = [1];
                $cl = length $rest;
            }
            ($body, $used) = (substr($rest, 0, $cl), $cl);
        } else {
            last unless $eof;
            ($body, $used) = ($rest, length $rest);
        }
        my $json = eval { JSON::PP->new->utf8->allow_nonref->decode($body) };
        push @out, {
            status => $status + 0, reason => $reason // '', http_version => $ver,
            headers => \%h, header_list => \@list, body => $body, json => $json,
            raw => substr($buf, 0, $hend + 4 + $used),
        };
        return @out if $first;
        $buf = substr($rest, $used);
    }
    return $first ? () : @out;
}

sub _dechunk {
    my ($s) = @_;
    my ($body, $pos) = ('', 0);
    while (1) {
        my $e = index($s, "\r\n", $pos);
        return if $e < 0;
        my ($size) = substr($s, $pos, $e - $pos) =~ /\A([0-9A-Fa-f]+)/ or return;
        $size = hex $size;
        $pos = $e + 2;
        if ($size == 0) {
            while (1) {    # trailers
                my $t = index($s, "\r\n", $pos);
                return if $t < 0;
                my $empty = $t == $pos;
                $pos = $t + 2;
                return ($body, $pos) if $empty;
            }
        }
        return if length($s) < $pos + $size + 2;
        $body .= substr($s, $pos, $size);
        $pos += $size + 2;
    }
}

# --------------------------------------------------------------------------
# tokens

sub b64url {
    my $s = encode_base64($_[0], '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+\z//;
    return $s;
}

sub b64url_decode {
    my ($s) = @_;
    return undef unless defined $s && $s =~ /\A[A-Za-z0-9_-]*\z/;
    (my $t = $s) =~ tr{-_}{+/};
    $t .= '=' x ((4 - length($t) % 4) % 4);
    return decode_base64($t);
}

# mint_jwt($secret, \%header, \%payload): HS256 compact JWT. Header and
# payload may also be raw JSON strings.
sub mint_jwt {
    my ($secret, $header, $payload) = @_;
    my $js = JSON::PP->new->utf8->canonical;
    my $h = b64url(ref $header ? $js->encode($header) : $header);
    my $p = b64url(ref $payload ? $js->encode($payload) : $payload);
    return "$h.$p." . b64url(hmac_sha256("$h.$p", $secret));
}

# $t->token(\%payload, secret => S, header => {...}, signature => 'raw b64')
sub token {
    my ($self, $payload, %o) = @_;
    my $header = $o{header} // { alg => 'HS256', typ => 'JWT' };
    my $jwt = mint_jwt($o{secret} // $self->{api_secret}, $header, $payload);
    my $sig = $o{signature};
    $sig = '' if !defined $sig && ref $header eq 'HASH' && ($header->{alg} // '') eq 'none';
    $jwt =~ s/[^.]*\z/$sig/ if defined $sig;
    return $jwt;
}

# a user token with iat/exp defaults; pass a claim as undef to omit it
sub user_token {
    my ($self, $user_id, %claims) = @_;
    my %p = (user_id => $user_id, iat => time, exp => time + 3600, %claims);
    $_ = int $_ for grep { defined && /\A\d+(?:\.\d+)?\z/ } @p{qw(iat exp nbf)};
    delete $p{$_} for grep { !defined $p{$_} } keys %p;
    return $self->token(\%p);
}

sub server_token {
    my ($self, %o) = @_;
    return $self->token({ server => JSON::PP::true }, %o);
}

# payload when $jwt is an HS256 token signed with the API secret, else undef
sub verify_server_token {
    my ($self, $jwt) = @_;
    return undef unless defined $jwt;
    $jwt =~ s/\ABearer //;
    my ($h, $p, $s) = split /\./, $jwt, -1;
    return undef unless defined $s && $jwt =~ tr/.// == 2;
    my $hdr = eval { JSON::PP->new->utf8->decode(b64url_decode($h) // '') };
    return undef unless ref $hdr eq 'HASH' && ($hdr->{alg} // '') eq 'HS256';
    return undef unless b64url(hmac_sha256("$h.$p", $self->{api_secret})) eq $s;
    my $pl = eval { JSON::PP->new->utf8->decode(b64url_decode($p) // '') };
    return ref $pl eq 'HASH' ? $pl : undef;
}

# --------------------------------------------------------------------------
# what reached the emulator

# List of records (hashrefs, see stream-emu.pl); body is the raw byte string.
sub upstream_requests {
    my ($self) = @_;
    open my $fh, '<:raw', $self->{record} or return ();
    flock($fh, LOCK_SH);
    my @r;
    my $js = JSON::PP->new->utf8;
    while (my $line = <$fh>) {
        next unless $line =~ /\S/;
        my $rec = $js->decode($line);
        utf8::encode($rec->{body}) if ($rec->{body_encoding} // '') eq 'utf-8';
        push @r, $rec;
    }
    close $fh;
    return @r;
}

sub upstream_count { my @r = $_[0]->upstream_requests; scalar @r }
sub last_upstream  { my @r = $_[0]->upstream_requests; $r[-1] }

sub reset_upstream {
    my ($self) = @_;
    sysopen(my $fh, $self->{record}, O_RDWR | O_CREAT, 0644) or die "$self->{record}: $!";
    flock($fh, LOCK_EX);
    truncate($fh, 0);
    close $fh;
    return $self;
}

# fault injection: {delay_ms, status, body, content_type, headers, close,
# reset_mid_response, rst, path_prefix}; undef removes it
sub emu_control {
    my ($self, $ctl) = @_;
    if (!defined $ctl) {
        unlink $self->{control};
        return $self;
    }
    my $tmp = "$self->{control}.tmp.$$";
    $self->write_file($tmp, JSON::PP->new->utf8->canonical->encode($ctl));
    rename $tmp, $self->{control} or die "rename $tmp: $!";
    return $self;
}

1;
