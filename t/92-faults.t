#!/usr/bin/perl

# Faults (SPEC sections 6 and 8, docs/errors.md, docs/audit.md): what the
# client gets when the upstream or NGINX itself fails, and that the status
# counters and the audit log stay consistent through every fault (one audit
# line per request; allowed+denied+limited+rejected of the action equals the
# requests sent; upstream_* counts the class of what the client got).
#
#   upstream refusing connections (an upstream block on a closed port)
#     -> 502 APIError code -1, counted upstream_5xx
#   the emulator closing mid-response (reset_mid_response, with and
#     without rst) -> Stream's status line and headers, then a body cut at
#     half its Content-Length and the connection closed: no JSON error can
#     follow a header already sent; counted upstream_2xx (the header
#     arrived), audit status 201. The emulator's rst sends a FIN before the
#     RST, so NGINX sees EOF; a true reset (an upstream of this test's own,
#     0.1 s after half the body) -> the 201 header and not one body byte
#     (NGINX drops what it had buffered), counted the same
#   answering slower than proxy_read_timeout 1s -> 504 APIError code -1
#   answering 429 with Stream's JSON and X-RateLimit-* -> unchanged,
#     counted upstream_4xx
#   answering 500 with truncated JSON -> byte for byte, upstream_5xx
#   closing without answering -> 502 APIError code -1
#   a worker killed with SIGKILL while it waits for the upstream (two
#     workers; not under STREAM_MOD_VALGRIND=1) -> only that request fails
#     (connection closed, no response), the master starts a new worker,
#     every other request gets 201, the shared counters keep counting; the
#     killed request reached Stream but has no audit line and no count
#   a limit zone full of active buckets -> 429 code 9 with Retry-After for
#     new moderators, full_refusals counted, an [error] "is full of active
#     buckets" line, audit decision "limit"; moderators with a bucket pass

use strict;
use warnings;

use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Socket ();
use POSIX ();
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error);

my $t = StreamMod::Test->new;
my $d = $t->dir;

my $VG = $t->valgrind;
my $workers = $VG eq '1' ? 1 : 2;
my $TIMEOUT = $VG ? 60 : 10;

my @ACTIONS = qw(ban unban mute unmute block_user unblock_user blocked_users
  deactivate_user reactivate_user deactivate_users reactivate_users
  export_users get_task mute_users block_call_user unblock_call_user
  kick_user update_user_permissions end_call request_permission);
my @COUNTERS = qw(allowed denied limited rejected upstream_2xx upstream_4xx
  upstream_5xx);

$t->write_policy({ rules => [ { effect => 'allow', actions => ['*'], users => ['*'] } ] });

# a port nothing listens on
my $closed_port = do {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1,
        Proto => 'tcp') or die "no port: $@";
    my $p = $s->sockport;
    close $s;
    $p;
};

# An upstream of our own for a true TCP reset: the emulator's "rst" shuts
# its write side down first (FIN), then closes with SO_LINGER 0, so NGINX
# reads EOF before the RST. This one answers Stream's 201 header and half
# the body, waits, then resets (SO_LINGER 0, no shutdown).
my $RST_PAUSE = $t->valgrind ? 1 : 0.1;
my $rst_listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16,
    Proto => 'tcp', ReuseAddr => 1) or die "no port: $@";
my $rst_port = $rst_listener->sockport;
my $rst_pid = fork // die "fork: $!";
if ($rst_pid == 0) {
    $SIG{TERM} = 'DEFAULT';
    while (my $c = $rst_listener->accept) {
        my $buf = '';
        while ($buf !~ /\r\n\r\n/) { sysread($c, $buf, 65536, length $buf) or last }
        my ($cl) = $buf =~ /\r\nContent-Length: *(\d+)/i;
        my $want = index($buf, "\r\n\r\n") + 4 + ($cl // 0);
        while (length $buf < $want) { sysread($c, $buf, 65536, length $buf) or last }
        syswrite($c, "HTTP/1.1 201 Created\r\nContent-Type: application/json;charset=utf-8\r\n"
            . "Content-Length: 21\r\nConnection: close\r\n\r\n{\"duration");
        sleep $RST_PAUSE;
        setsockopt($c, Socket::SOL_SOCKET(), Socket::SO_LINGER(), pack('ii', 1, 0));
        close $c;
    }
    POSIX::_exit(0);
}
close $rst_listener;
END { local $?; if ($rst_pid) { kill 'TERM', $rst_pid; waitpid($rst_pid, 0) } }

sub server_block {
    my ($name, $pass, $extra) = @_;
    $extra //= '';
    my $locs = join '', map { <<"LOC" } qw(moderation calls);
        location /$_/ {
            stream_mod on;
            access_log %%DIR%%/audit.log audit;
$extra
            proxy_pass $pass;
        }
LOC
    return <<"SRV";
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name $name;
$locs
        location = /stream_mod/status { stream_mod_status; }
    }
SRV
}

$t->write_config(<<"CONF", workers => $workers);
http {
@{[ $t->http_preamble ]}
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy.json;

    stream_mod_limit_zone zone=tiny:32k rate=1r/m;

    log_format audit escape=json '{"action":"\$stream_mod_action","decision":"\$stream_mod_decision","status":\$status,"upstream_status":"\$upstream_status"}';

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

    upstream stream_rst {
        server 127.0.0.1:$rst_port;
    }

    upstream stream_down {
        server 127.0.0.1:$closed_port;
    }

@{[ server_block('localhost', 'http://stream_api') ]}
@{[ server_block('down', 'http://stream_down') ]}
@{[ server_block('rst', 'http://stream_rst') ]}
@{[ server_block('slow', 'http://stream_api', '            proxy_read_timeout 1s;') ]}
@{[ server_block('tiny', 'http://stream_api', '            stream_mod_limit zone=tiny burst=5;') ]}
}
CONF

# the worker killed below is reported by the master at [alert]
$t->allow_log(qr/worker process \d+ exited on signal 9/);

$t->run;

# --------------------------------------------------------------------------
# helpers

my %tokens;
sub tok { $tokens{ $_[0] } //= $t->user_token($_[0]) }

sub ban {
    my (%o) = @_;
    my $user = delete $o{user} // 'mod-1';
    return $t->request(POST => '/moderation/ban', token => tok($user),
        json => { target_user_id => 'u-2' }, timeout => $TIMEOUT, %o);
}

sub status {
    my $r = $t->request(GET => '/stream_mod/status', timeout => $TIMEOUT);
    return $r->{json};
}

sub zeros { return { map { $_ => 0 } @COUNTERS } }
my %expected = map { $_ => zeros() } @ACTIONS;

sub canon { JSON::PP->new->canonical->encode($_[0] // {}) }

# counters move in the log phase, just after the response is sent: poll
sub status_matching {
    my ($want) = @_;
    my $s;
    my $end = time + ($VG ? 20 : 3);
    while (1) {
        $s = status() // {};
        last if canon($s->{actions}) eq canon($want) || time > $end;
        sleep 0.05;
    }
    return $s;
}

sub check_counters {
    my ($name) = @_;
    my $s = status_matching(\%expected);
    is_deeply($s->{actions}, \%expected, "$name: status counters of every action exact")
        or diag(explain({ map { $_ => $s->{actions}{$_} } grep {
            canon($s->{actions}{$_}) ne canon($expected{$_}) } @ACTIONS }));
    return $s;
}

# The audit log: with two workers, lines of consecutive requests may land
# in either order, so each section compares the multiset of its lines.
my $audit_seen = 0;
my @section_audit;    # expected lines of the current section

sub audit_expect {
    my ($action, $decision, $status, $upstream_status) = @_;
    push @section_audit, { action => $action, decision => $decision, status => $status,
        upstream_status => $upstream_status };
}

sub audit_lines {
    open my $fh, '<:raw', "$d/audit.log" or return ();
    # complete lines only: a line being written may be read half-way
    (my $text = do { local $/; <$fh> // '' }) =~ s/[^\n]*\z//;
    return grep { length } split /\n/, $text;
}

sub check_audit {
    my ($name) = @_;
    my $want = $audit_seen + @section_audit;
    my @lines;
    my $end = time + ($VG ? 20 : 3);
    while (1) {
        @lines = audit_lines();
        last if @lines >= $want || time > $end;
        sleep 0.05;
    }
    sleep 0.2;    # a line too many would come now
    @lines = audit_lines();
    is(scalar @lines, $want, "$name: exactly one audit line per request ("
        . scalar(@section_audit) . ' in this section)');
    my @got = sort map { my $j = eval { JSON::PP->new->utf8->decode($_) }; $j ? canon($j) : "unparsable: $_" }
        @lines[ $audit_seen .. $#lines ];
    my @exp = sort map { canon($_) } @section_audit;
    is_deeply(\@got, \@exp, "$name: the audit lines (action, decision, status, upstream_status)")
        or diag(join "\n", 'got:', @got, 'expected:', @exp);
    $audit_seen = @lines;
    @section_audit = ();
}

sub count_log {
    my ($re) = @_;
    return scalar grep { /$re/ } split /\n/, $t->error_log;
}

# --------------------------------------------------------------------------
# baseline: a ban that works

my $r = ban();
is($r->{status}, 201, 'baseline: POST /moderation/ban with a valid token -> 201');
is($r->{body}, '{"duration":"0.42ms"}', 'baseline: Stream\'s ban answer is {"duration":"0.42ms"}');
$expected{ban}{allowed}++;
$expected{ban}{upstream_2xx}++;
audit_expect(ban => allow => 201, '201');
check_counters('baseline');
check_audit('baseline');

# --------------------------------------------------------------------------
# upstream refusing connections

{
    my $before = $t->upstream_count;
    for my $i (1, 2) {
        my $r = ban(host => 'down');
        is($r->{status}, 502, "upstream on a closed port, ban $i of 2 -> 502");
        is_deeply($r->{json}, api_error(502, -1, 'upstream unavailable'),
            "upstream on a closed port, ban $i of 2 -> APIError code -1 \"upstream unavailable\"")
            or diag($r->{body});
        is_deeply($r->{headers}{'content-type'}, ['application/json'],
            "upstream on a closed port, ban $i of 2 -> Content-Type application/json");
        $expected{ban}{allowed}++;
        $expected{ban}{upstream_5xx}++;
        audit_expect(ban => allow => 502, '502');
    }
    is($t->upstream_count, $before, 'upstream on a closed port: nothing reached the emulator');
    check_counters('upstream on a closed port (allowed +2, upstream_5xx +2)');
    check_audit('upstream on a closed port');
    is(count_log(qr/\[error\].*connect\(\) failed \(111: Connection refused\) while connecting to upstream/), 2,
        'upstream on a closed port: two [error] "connect() failed (111: Connection refused)" lines');
}

# --------------------------------------------------------------------------
# the emulator closing mid-response: the header is already on its way

{
    my $body = '{"duration":"0.42ms","pad":"' . ('0123456789' x 10) . '"}';
    my $blen = length $body;
    my $premature = qr/\[error\].*upstream prematurely closed connection while reading upstream/;
    my $n0 = count_log($premature);

    my @cases = (
        [ 'reset_mid_response (FIN)', { reset_mid_response => 1 }, '{"duration":"0.42ms"}' ],
        [ 'reset_mid_response with rst', { reset_mid_response => 1, rst => 1 }, '{"duration":"0.42ms"}' ],
        [ "reset_mid_response, a $blen-byte 201 body",
          { reset_mid_response => 1, status => 201, body => $body }, $body ],
        [ "reset_mid_response with rst, a $blen-byte 201 body",
          { reset_mid_response => 1, rst => 1, status => 201, body => $body }, $body ],
    );
    for my $c (@cases) {
        my ($name, $ctl, $full) = @$c;
        my $cut = substr($full, 0, int(length($full) / 2));
        $t->emu_control($ctl);
        my $t0 = time;
        # keep-alive asked: only a closed connection ends the read
        my ($r) = $t->raw_request("POST /moderation/ban HTTP/1.1\r\nHost: localhost\r\n"
            . 'Authorization: Bearer ' . tok('mod-1') . "\r\nContent-Type: application/json\r\n"
            . "Content-Length: 24\r\nConnection: keep-alive\r\n\r\n"
            . '{"target_user_id":"u-2"}', all => 1, timeout => 5);
        my $elapsed = time - $t0;
        $t->emu_control(undef);
        $r //= { headers => {} };
        is($r->{status}, 201, "$name: ban -> Stream's status line 201 reaches the client");
        is_deeply($r->{headers}{'content-length'}, [ length $full ],
            "$name: ban -> Stream's Content-Length " . length($full) . ' passes');
        is($r->{body}, $cut, "$name: ban -> the body is cut where the emulator stopped ("
            . length($cut) . ' bytes)');
        ok($r->{headers}{'x-test-truncated'}, "$name: ban -> the body is shorter than Content-Length");
        ok($elapsed < 4, "$name: ban with keep-alive -> NGINX closes the client connection at once")
            or diag("elapsed $elapsed s");
        ok(!defined $r->{json} && $r->{raw} !~ /"code":-1/,
            "$name: ban -> no APIError JSON follows (the header was already sent)");
        $expected{ban}{allowed}++;
        $expected{ban}{upstream_2xx}++;
        audit_expect(ban => allow => 201, '201');
    }
    is(count_log($premature) - $n0, 4,
        'emulator mid-response resets: four [error] "upstream prematurely closed connection while reading upstream" '
        . 'lines (the emulator shuts its write side down before the RST, so NGINX sees EOF first)');

    # a true RST: NGINX had the first 10 body bytes buffered and drops them
    my $reset = qr/\[error\].*(?:readv|recv)\(\) failed \(104: Connection reset by peer\) while reading upstream/;
    my $r0 = count_log($reset);
    my $t0 = time;
    my ($r) = $t->raw_request("POST /moderation/ban HTTP/1.1\r\nHost: rst\r\n"
        . 'Authorization: Bearer ' . tok('mod-1') . "\r\nContent-Type: application/json\r\n"
        . "Content-Length: 24\r\nConnection: keep-alive\r\n\r\n"
        . '{"target_user_id":"u-2"}', all => 1, timeout => 5);
    my $elapsed = time - $t0;
    $r //= { headers => {} };
    my $name = "true RST $RST_PAUSE s after half the body";
    is($r->{status}, 201, "$name: ban -> Stream's status line 201 reaches the client");
    is_deeply($r->{headers}{'content-length'}, ['21'], "$name: ban -> Stream's Content-Length 21 passes");
    is($r->{body}, '', "$name: ban -> no body byte at all (the 10 NGINX had read are dropped)");
    ok($r->{headers}{'x-test-truncated'}, "$name: ban -> the body is shorter than Content-Length");
    ok($elapsed < 4, "$name: ban with keep-alive -> NGINX closes the client connection at once")
        or diag("elapsed $elapsed s");
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_2xx}++;
    audit_expect(ban => allow => 201, '201');
    is(count_log($reset) - $r0, 1,
        "$name: one [error] \"readv() failed (104: Connection reset by peer) while reading upstream\" line");

    check_counters('mid-response resets (allowed +5, upstream_2xx +5: the 201 header arrived)');
    check_audit('mid-response resets');
}

# --------------------------------------------------------------------------
# answering slower than proxy_read_timeout 1s

{
    my $before = $t->upstream_count;
    $t->emu_control({ delay_ms => 3000 });
    my $t0 = time;
    my $r = ban(host => 'slow', timeout => 20);
    my $elapsed = time - $t0;
    $t->emu_control(undef);
    is($r->{status}, 504, 'upstream answering after 3 s, proxy_read_timeout 1s: ban -> 504');
    is_deeply($r->{json}, api_error(504, -1, 'upstream timed out'),
        'upstream answering after 3 s: ban -> APIError code -1 "upstream timed out"')
        or diag($r->{body});
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'upstream answering after 3 s: ban -> Content-Type application/json');
    ok($elapsed >= 0.9 && $elapsed < ($VG ? 10 : 2.8),
        'upstream answering after 3 s: the 504 comes after the 1 s timeout, not after the answer')
        or diag("elapsed $elapsed s");
    # the emulator records the request once its delay is over
    my $end = time + 5;
    sleep 0.05 while $t->upstream_count == $before && time < $end;
    is($t->upstream_count - $before, 1, 'upstream answering after 3 s: the emulator did get the ban once');
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_5xx}++;
    audit_expect(ban => allow => 504, '504');
    check_counters('slow upstream (allowed +1, upstream_5xx +1)');
    check_audit('slow upstream');
    is(count_log(qr/\[error\].*upstream timed out \(110: Connection timed out\) while reading response header from upstream/), 1,
        'slow upstream: one [error] "upstream timed out" line');
}

# --------------------------------------------------------------------------
# Stream's 429 with its rate-limit headers

{
    my $body = '{"code":9,"message":"Too many requests, check response headers for more info.",'
        . '"StatusCode":429,"duration":"0.01ms","more_info":"https://getstream.io/rate-limits","details":[]}';
    $t->emu_control({ status => 429, body => $body, content_type => 'application/json;charset=utf-8',
        headers => { 'X-RateLimit-Limit' => '60', 'X-RateLimit-Remaining' => '0',
                     'X-RateLimit-Reset' => '1700000000' } });
    my $r = ban();
    $t->emu_control(undef);
    is($r->{status}, 429, 'Stream answers 429: ban -> 429');
    is($r->{body}, $body, 'Stream answers 429: ban -> Stream\'s body byte for byte');
    is_deeply($r->{headers}{'content-type'}, ['application/json;charset=utf-8'],
        'Stream answers 429: ban -> Stream\'s Content-Type');
    is_deeply([ map { $r->{headers}{$_} } qw(x-ratelimit-limit x-ratelimit-remaining x-ratelimit-reset) ],
        [ ['60'], ['0'], ['1700000000'] ],
        'Stream answers 429: ban -> Stream\'s X-RateLimit-Limit/-Remaining/-Reset, once each, unchanged');
    ok(!$r->{headers}{'retry-after'}, 'Stream answers 429 without Retry-After: ban -> no Retry-After added');
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_4xx}++;
    audit_expect(ban => allow => 429, '429');
    check_counters('Stream\'s 429 (allowed +1, upstream_4xx +1, limited unchanged)');
    check_audit('Stream\'s 429');
}

# --------------------------------------------------------------------------
# Stream's 500 with malformed JSON

{
    my $body = '{"code":';
    $t->emu_control({ status => 500, body => $body, content_type => 'application/json' });
    my $r = ban();
    $t->emu_control(undef);
    is($r->{status}, 500, 'Stream answers 500 with body {"code": -> 500');
    is($r->{raw} =~ /\r\n\r\n(.*)\z/s ? $1 : undef, $body,
        'Stream answers 500 with body {"code": -> exactly those 8 bytes, not an APIError');
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'Stream answers 500 with body {"code": -> Stream\'s Content-Type application/json');
    is_deeply($r->{headers}{'content-length'}, ['8'], 'Stream answers 500 with body {"code": -> Content-Length 8');
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_5xx}++;
    audit_expect(ban => allow => 500, '500');
    check_counters('Stream\'s malformed 500 (allowed +1, upstream_5xx +1)');
    check_audit('Stream\'s malformed 500');
}

# --------------------------------------------------------------------------
# the emulator closing without answering

{
    my $before = $t->upstream_count;
    $t->emu_control({ close => 1 });
    my $r = ban();
    $t->emu_control(undef);
    is($r->{status}, 502, 'upstream closes without answering: ban -> 502');
    is_deeply($r->{json}, api_error(502, -1, 'upstream unavailable'),
        'upstream closes without answering: ban -> APIError code -1 "upstream unavailable"')
        or diag($r->{body});
    is_deeply($r->{headers}{'content-type'}, ['application/json'],
        'upstream closes without answering: ban -> Content-Type application/json');
    is($t->upstream_count - $before, 1, 'upstream closes without answering: the emulator got the ban once (no retry)');
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_5xx}++;
    audit_expect(ban => allow => 502, '502');
    check_counters('upstream closes (allowed +1, upstream_5xx +1)');
    check_audit('upstream closes');
    is(count_log(qr/\[error\].*upstream prematurely closed connection while reading response header from upstream/), 1,
        'upstream closes: one [error] "prematurely closed ... while reading response header" line');
}

# --------------------------------------------------------------------------
# a worker killed mid-traffic

# ESTABLISHED TCP connections to the emulator: inode => 1
sub emu_connections {
    my %ino;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $f or next;
        <$fh>;
        while (my $l = <$fh>) {
            my @f = split ' ', $l;
            my ($rport) = ($f[2] // '') =~ /:([0-9A-F]{4})\z/ or next;
            $ino{ $f[9] } = 1 if hex($rport) == $t->emu_port && $f[3] eq '01' && $f[9];
        }
    }
    return \%ino;
}

# the worker holding a connection to the emulator: (pid, inode)
sub worker_waiting_upstream {
    my $ino = emu_connections();
    for my $pid ($t->worker_pids) {
        opendir my $dh, "/proc/$pid/fd" or next;
        for my $fd (readdir $dh) {
            my $l = readlink "/proc/$pid/fd/$fd" // next;
            return ($pid, $1) if $l =~ /\Asocket:\[(\d+)\]\z/ && $ino->{$1};
        }
    }
    return;
}

SKIP: {
    skip 'STREAM_MOD_VALGRIND=1 runs NGINX as one process (master_process off): no worker to kill', 17
        if $VG eq '1';

    my $N = 100;
    my $log = "$d/kill-client.log";
    my @old = sort { $a <=> $b } $t->worker_pids;
    is(scalar @old, 2, 'worker kill: two workers run') or diag("@old");
    my $blocks = sub { scalar grep { $_->{path} eq '/api/v2/users/block' } $t->upstream_requests };
    my $up_before = $blocks->();

    # the client: $N sequential block_user requests, one line per answer
    my $child = fork // die "fork: $!";
    if ($child == 0) {
        open my $out, '>>', $log or POSIX::_exit(1);
        $out->autoflush(1);
        my $tk = tok('mod-k');
        for my $i (1 .. $N) {
            my $t0 = time;
            my $r = $t->request(POST => '/moderation/block', token => $tk,
                json => { blocked_user_id => "k-$i" }, timeout => $TIMEOUT * 3);
            printf $out "%d\t%s\t%.6f\t%.6f\t%d\t%s\n", $i, $r->{status} // 'none', $t0, time,
                length($r->{raw} // ''), $r->{error} // '';
        }
        POSIX::_exit(0);
    }

    my $lines = sub { scalar grep { /\S/ } split /\n/, $t->slurp($log) };
    my @samples;
    my $sample = sub { my $s = status(); push @samples, $s if $s; $s };

    # after 20 answers, hold the next request in the emulator (1.5 s) and
    # kill the worker that waits for it
    my $end = time + 60;
    $sample->(), sleep 0.02 while $lines->() < 20 && time < $end;
    $t->emu_control({ delay_ms => 1500 });
    my ($victim, %seen, $kill_time);
    $end = time + 10;
    while (time < $end) {
        my ($pid, $ino) = worker_waiting_upstream();
        if ($pid) {
            $seen{"$pid/$ino"} //= time;
            if (time - $seen{"$pid/$ino"} >= 0.3) { $victim = $pid; last }
        }
        sleep 0.02;
    }
    $t->emu_control(undef);
    ok($victim, 'worker kill: a worker waits 0.3 s for a held upstream answer')
        or diag('no worker held a connection to the emulator');
    if ($victim) {
        $kill_time = time;
        kill 'KILL', $victim;
    }

    # status keeps answering while the client goes on
    my $child_status;
    $end = time + ($VG ? 300 : 60);
    while (time < $end) {
        $sample->();
        if (waitpid($child, POSIX::WNOHANG()) == $child) { $child_status = $?; last }
        sleep 0.02;
    }
    if (!defined $child_status) { kill 'KILL', $child; waitpid($child, 0) }
    is($child_status, 0, "worker kill: the client sent its $N requests");

    my @new;
    $end = time + $TIMEOUT;
    while (time < $end) {
        @new = sort { $a <=> $b } $t->worker_pids;
        last if @new == 2 && !grep { $_ == ($victim // 0) } @new;
        sleep 0.05;
    }
    is(scalar @new, 2, 'worker kill: the master runs two workers again') or diag("@new");
    ok(!grep({ $_ == ($victim // 0) } @new), 'worker kill: the killed worker is gone');
    is(scalar(grep { my $p = $_; !grep { $_ == $p } @old } @new), 1, 'worker kill: one of them is a new worker');
    my $vpid = $victim // 'none';
    is(count_log(qr/\[alert\].*worker process \Q$vpid\E exited on signal 9/), 1,
        'worker kill: the error log has "worker process <pid> exited on signal 9"');

    my @res = map { [ split /\t/, $_, 6 ] } grep { /\S/ } split /\n/, $t->slurp($log);
    is(scalar @res, $N, "worker kill: the client recorded $N answers");
    my @failed = grep { $_->[1] ne '201' } @res;
    is(scalar @failed, 1, 'worker kill: exactly one request failed')
        or diag(explain(\@failed));
    my $f = $failed[0] // [];
    ok(defined $f->[2] && $kill_time && $f->[2] < $kill_time && $f->[3] > $kill_time,
        'worker kill: the failed request is the one in flight at the kill');
    is_deeply([ @$f[1, 4, 5] ], [ 'none', 0, 'unparsable response' ],
        'worker kill: the in-flight block_user -> connection closed, no byte of response');
    is(scalar(grep { $_->[1] eq '201' } @res), $N - 1, 'worker kill: every other block_user -> 201');

    # the counters: shared, never going back, exact
    my $mono = 1;
    for my $i (1 .. $#samples) {
        for my $a (@ACTIONS) {
            for my $c (@COUNTERS) {
                $mono = 0 if $samples[$i]{actions}{$a}{$c} < $samples[ $i - 1 ]{actions}{$a}{$c};
            }
        }
    }
    ok(@samples >= 5 && $mono, 'worker kill: ' . scalar(@samples)
        . ' status answers during the run, no counter ever went back');

    # the killed request reached Stream, but was never logged: no audit
    # line, no count
    $end = time + 5;
    sleep 0.05 while $blocks->() - $up_before < $N && time < $end;
    is($blocks->() - $up_before, $N,
        "worker kill: the emulator got all $N block_user requests (the killed one too)");
    $expected{block_user}{allowed} += $N - 1;
    $expected{block_user}{upstream_2xx} += $N - 1;
    audit_expect(block_user => allow => 201, '201') for 1 .. $N - 1;
    check_counters("worker kill (block_user allowed and upstream_2xx +" . ($N - 1) . ', the killed request uncounted)');
    check_audit('worker kill');
}

# --------------------------------------------------------------------------
# a limit zone full of active buckets

{
    my $full = qr/\[error\].*stream_mod: zone "tiny" is full of active buckets, request refused; make the zone larger/;
    my $s0 = status();
    my ($n, $first, @statuses) = (0);
    my ($before, $after);
    for my $i (1 .. 2000) {
        my $u = sprintf 'z%04d', $i;
        $before = time;
        my $r = $t->request(POST => '/moderation/mute', host => 'tiny', token => tok($u),
            json => { target_ids => ['u-2'] }, timeout => $TIMEOUT);
        $after = time;
        push @statuses, $r->{status} // 'none';
        if (($r->{status} // 0) != 201) { $first = $r; last }
        $n++;
    }
    ok($n > 50, "zone tiny:32k: $n distinct moderators got 201 before the zone filled");
    is_deeply([ grep { $_ ne '201' } @statuses[ 0 .. $#statuses - 1 ] ], [],
        'zone tiny:32k: every mute before the first refusal -> 201');
    $first //= { headers => {} };
    is($first->{status}, 429, 'zone full: mute by a new moderator -> 429');
    is_deeply($first->{json}, api_error(429, 9, 'rate limit exceeded (zone tiny)'),
        'zone full: mute by a new moderator -> APIError code 9 "rate limit exceeded (zone tiny)"')
        or diag($first->{body});
    # no bucket to compute from: as for a bucket that is just full. 1r/m
    # is 16 (not 16.67) requests per 1000 s in NGINX's units, so one
    # request leaks in 62.5 s and burst+1 = 6 in 375 s.
    is_deeply($first->{headers}{'retry-after'}, ['63'], 'zone full: Retry-After: 63');
    is_deeply([ map { $first->{headers}{$_} } qw(x-ratelimit-limit x-ratelimit-remaining) ], [ ['6'], ['0'] ],
        'zone full: X-RateLimit-Limit 6, X-RateLimit-Remaining 0');
    my $reset = $first->{headers}{'x-ratelimit-reset'}[0] // 0;
    ok($reset >= int($before) + 375 && $reset <= int($after) + 375,
        'zone full: X-RateLimit-Reset is now + 375 s') or diag("reset $reset, now $after");

    # four more newcomers: refused too; a moderator with a bucket passes
    my @more = map { $t->request(POST => '/moderation/mute', host => 'tiny', token => tok("y$_"),
        json => { target_ids => ['u-2'] }, timeout => $TIMEOUT)->{status} // 'none' } 1 .. 4;
    is("@more", '429 429 429 429', 'zone full: mutes by four more new moderators -> 429 each');
    $r = $t->request(POST => '/moderation/mute', host => 'tiny', token => tok('z0001'),
        json => { target_ids => ['u-2'] }, timeout => $TIMEOUT);
    is($r->{status}, 201, 'zone full: a second mute by z0001, who has a bucket -> 201');

    $expected{mute}{allowed} += $n + 1;
    $expected{mute}{upstream_2xx} += $n + 1;
    $expected{mute}{limited} += 5;
    audit_expect(mute => allow => 201, '201') for 1 .. $n + 1;
    audit_expect(mute => limit => 429, '') for 1 .. 5;
    my $s = check_counters("zone full (mute allowed +" . ($n + 1) . ', limited +5)');
    is_deeply($s->{zones}{tiny}, {
        size => 32768, entries => $n, evictions => 0, expired => 0, full_refusals => 5,
        dry_run_hits => 0, rate => '1r/m' },
        "zone full: zone tiny holds $n buckets, full_refusals 5, nothing evicted or expired");
    check_audit('zone full');
    is(count_log($full), 5, 'zone full: five [error] "zone "tiny" is full of active buckets" lines');
}

# --------------------------------------------------------------------------
# overall

is(scalar(audit_lines()), $audit_seen, 'overall: no audit line beyond the requests sent');
my $final = status();
my $sum = 0;
for my $a (@ACTIONS) { $sum += $final->{actions}{$a}{$_} for qw(allowed denied limited rejected) }
my $up = 0;
for my $a (@ACTIONS) { $up += $final->{actions}{$a}{$_} for qw(upstream_2xx upstream_4xx upstream_5xx) }
is($sum, $audit_seen, 'overall: allowed+denied+limited+rejected over all actions equals the audit lines');
is($up, $sum - 5, 'overall: every allowed request is counted in exactly one upstream class');

$t->stop;

done_testing;
