#!/usr/bin/perl

# The example moderator console (docs/examples/console/) in a real browser:
# Debian's Chromium, driven by playwright-core (t/browser/console.mjs), on
# the same origin as the gateway, as tools/demo serves it.
#
# 1. bob (moderator, docs/examples/policy.json) under a tight limit
#    (1r/m, burst=1): ban 30 min -> 201, ban 120 min -> 403 code 17 naming
#    max_timeout, ban 45 min -> 201, ban 30 min -> 429 code 9 with
#    Retry-After. The emulator gets exactly the two allowed bans, stamped.
# 2. alice (admin) under the demo's limit: unban, mute in a call, kick,
#    block, bulk deactivate, and the task poll until "completed".
# 3. 1. again with the page on another origin than the gateway, which lists
#    it in stream_mod_cors_origins (SPEC 8).
#
# Needs chromium, node and playwright-core: t/browser/setup.sh installs
# what is missing (apt, npm). STREAM_MOD_SKIP_BROWSER=1 skips this file.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(time);
use POSIX ();
use IO::Socket::INET;

use lib 't/lib';
use StreamMod::Test;

plan skip_all => 'STREAM_MOD_SKIP_BROWSER is set' if $ENV{STREAM_MOD_SKIP_BROWSER};

my $started = time;

my $t1   = StreamMod::Test->new;
my $repo = $t1->repo;

# ---------------------------------------------------------------------------
# chromium, node, playwright-core

{
    my $log = $t1->dir . '/setup.log';
    my $rc = system("sh '$repo/t/browser/setup.sh' >'$log' 2>&1");
    my $out = do { local $/; open my $fh, '<', $log; <$fh> // '' };
    unless (ok($rc == 0, 't/browser/setup.sh: chromium, node and playwright-core are there')) {
        # a failure, not a skip: only STREAM_MOD_SKIP_BROWSER=1 skips
        diag("t/browser/setup.sh failed:\n$out");
        done_testing;
        exit 1;
    }
    note($out) if length $out;
}

# ---------------------------------------------------------------------------
# helpers

my $console_dir = "$repo/docs/examples/console/";
my $types = 'types { text/html html; application/javascript js; text/css css; }';
my $example_policy = do {
    open my $fh, '<:raw', "$repo/docs/examples/policy.json" or die "policy.json: $!";
    local $/;
    <$fh>;
};

# nginx with the module, the example policy, a limit zone, the console at
# /console/ on the gateway's own server, and with page_port => N also on a
# second server (another origin), which stream_mod_cors_origins lists
sub gateway {
    my ($t, $zone, %o) = @_;
    my $http = "    $types\n    stream_mod_limit_zone zone=mods:1m rate=$zone->{rate};\n";
    if (my $pp = $o{page_port}) {
        $http .= "    stream_mod_cors_origins http://127.0.0.1:$pp;\n"
          . "    server {\n"
          . "        listen 127.0.0.1:$pp;\n"
          . "        location /console/ { alias $console_dir; }\n"
          . "    }\n";
    }
    $t->write_policy($example_policy);
    $t->write_config($t->default_config(
        http     => $http,
        location => "            stream_mod_limit zone=mods burst=$zone->{burst};",
        server   => "        location /console/ { alias $console_dir; }",
    ));
    $t->run;
    return $t;
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', Listen => 1) or die "no free port: $@";
    return $s->sockport;
}

# node console.mjs URL TOKEN SCENARIO [BASE] -> (decoded stdout or undef,
# exit code, stderr); the page from the gateway itself, or from page_port
# with the gateway as its base URL
sub drive {
    my ($t, $token, $scenario, %o) = @_;
    my $url = 'http://127.0.0.1:' . ($o{page_port} // $t->port) . '/console/';
    my @base = $o{page_port} ? ('http://127.0.0.1:' . $t->port) : ();
    my $err = $t->dir . "/driver-$scenario.err";
    my $t0 = time;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>', $err or die "$err: $!";
        exec 'node', "$repo/t/browser/console.mjs", $url, $token, $scenario, @base
          or do { print STDERR "exec node: $!\n"; POSIX::_exit(127) };
    }
    my $stdout = '';
    my $timed_out = 0;
    eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm($t->valgrind ? 600 : 240);
        local $/;
        $stdout = <$fh> // '';
        alarm 0;
        1;
    } or do { $timed_out = 1; kill 'TERM', $pid };
    close $fh;
    my $rc = $? >> 8;
    my $stderr = do { local $/; open my $efh, '<', $err; <$efh> // '' };
    $stderr = "timed out\n$stderr" if $timed_out;
    my $res = eval { JSON::PP->new->utf8->decode($stdout) };
    note(sprintf "browser %s: %.1f s", $scenario, time - $t0);
    return ($res, $rc, $stderr . ($res ? '' : "stdout: $stdout"));
}

# the page loaded as a page, with its script and stylesheet, and nothing
# went wrong in it besides the gateway's own refusals (which Chromium
# reports as "Failed to load resource" console errors)
sub page_ok {
    my ($r, $who, $refused) = @_;
    is($r->{http_status}, 200, "$who: /console/ answers 200");
    like($r->{content_type} // '', qr{\Atext/html}, "$who: as text/html");
    is($r->{title}, 'ngx_stream_mod moderator console', "$who: the console's title");
    ok($r->{stylesheet_applied}, "$who: console.css applied");
    is($r->{base}, $r->{url} =~ s{\A(https?://[^/]+).*}{$1}r,
        "$who: the gateway base URL defaults to the page's origin");
    is($r->{mint_command}, 'tools/token bob', "$who: the page shows how to mint a token");
    is_deeply($r->{page_errors}, [], "$who: no script errors");
    my @other = grep {
        !/\AFailed to load resource: the server responded with a status of (?:$refused) /
    } @{ $r->{console_errors} };
    is_deeply(\@other, [], "$who: no console errors besides the gateway's refusals")
      or diag(explain($r->{console_errors}));
    is_deeply($r->{failed_requests}, [], "$who: no request failed in the browser");
    is($r->{busy}, '0', "$who: no request left in flight");
}

# upstream requests carry only allowlisted headers (SPEC 7): nothing of
# what a browser adds (Origin, Referer, User-Agent, Sec-Fetch-*, ...)
my %allowed_header = map { $_ => 1 } qw(content-type accept accept-encoding
  x-client-request-id authorization stream-auth-type x-stream-client host
  content-length connection);

sub upstream_headers_ok {
    my ($u, $name) = @_;
    my @extra = sort grep { !$allowed_header{$_} } keys %{ $u->{headers} || {} };
    is_deeply(\@extra, [], "$name: no browser header reaches Stream");
}

sub step_is {
    my ($s, $name, %want) = @_;
    ok($s, "$name: the page answered") or return;
    for my $k (sort keys %want) {
        if (ref $want{$k} eq 'Regexp') {
            like($s->{$k}, $want{$k}, "$name: page shows $k");
        } else {
            is($s->{$k}, $want{$k}, "$name: page shows $k '$want{$k}'");
        }
    }
}

# ---------------------------------------------------------------------------
# 1. bob: allowed, denied, allowed, rate-limited

# bob's four bans (scenario "bans") as the page showed them, and what
# reached "Stream": the two allowed bans, stamped with bob, and nothing for
# the denied and the rate-limited one
sub check_bans {
    my ($t, $w, $bans) = @_;
    SKIP: {
        skip "$w: no output from the browser", 1 unless $bans;
        page_ok($bans, $w, '403|429');
        is($bans->{whoami}, 'bob', "$w: the page reads user_id bob from the pasted token");

        my @s = @{ $bans->{steps} };
        is(scalar @s, 4, "$w: four answers shown");

        step_is($s[0], "$w: ban carol 30", action => 'ban', status => '201', code => '',
            message => '', outcome => 'done',
            request => 'POST /moderation/ban {"target_user_id":"carol","reason":"spam","timeout":30}');

        step_is($s[1], "$w: ban dave 120", action => 'ban', status => '403', code => '17',
            outcome => 'denied', message => qr/max_timeout/, retry_after => '');
        like($s[1]{message}, qr/\brule 2\b/, "$w: ban dave 120: the message names the rule");
        like($s[1]{body}, qr/"StatusCode": 403/, "$w: ban dave 120: the APIError body is shown");

        step_is($s[2], "$w: ban erin 45", action => 'ban', status => '201', code => '',
            outcome => 'done');

        step_is($s[3], "$w: ban frank 30", action => 'ban', status => '429', code => '9',
            outcome => 'rate-limited', message => qr/\S/, retry_after => qr/\A[1-9]\d*\z/,
            ratelimit_limit => qr/\A[1-9]\d*\z/, ratelimit_remaining => '0',
            ratelimit_reset => qr/\A\d{10}\z/);
        # about a minute: the bucket leaks one request a minute. Like
        # limit_req, the zone keeps the rate in whole requests per 1000 s
        # (1r/m is 16, not 16.67): it drains in 62.5 s and the gateway says
        # 63, truthfully.
        ok($s[3]{retry_after} >= 1 && $s[3]{retry_after} <= 63,
            "$w: ban frank 30: Retry-After within the 1r/m bucket ($s[3]{retry_after})");
        # Reset is when the whole allowance (burst + 1 quick requests) is
        # back: the bucket holds two requests' worth, two intervals (125 s).
        ok($s[3]{ratelimit_reset} >= int($started) + 120 && $s[3]{ratelimit_reset} <= time + 126,
            "$w: ban frank 30: X-RateLimit-Reset is a Unix time two intervals ahead");

        # the log: one line per request, newest first
        my @log = @{ $bans->{log} };
        is_deeply([ map { "$_->{action} $_->{status} $_->{code}" } @log ],
            [ 'ban 429 9', 'ban 201 ', 'ban 403 17', 'ban 201 ' ],
            "$w: the log lists every answer, newest first");
        is($log[0]{retryAfter}, $s[3]{retry_after}, "$w: the log line keeps Retry-After");
        like($log[0]{text}, qr/Retry-After: \d+/, "$w: and shows it");
        like($log[1]{text}, qr{POST /moderation/ban \x{2192} 201},
            "$w: a log line reads as a request and its status");
        like($log[2]{text}, qr/code 17 .*max_timeout/,
            "$w: the denial in the log shows code and message");
    }

    my @up = $t->upstream_requests;
    is(scalar @up, 2, "$w: Stream got exactly the two allowed bans");
    my @want = (
        '{"banned_by_id":"bob","target_user_id":"carol","reason":"spam","timeout":30}',
        '{"banned_by_id":"bob","target_user_id":"erin","timeout":45}',
    );
    for my $i (0, 1) {
        my $u = $up[$i] or next;
        my $name = "$w: upstream ban " . ($i + 1);
        is($u->{method}, 'POST', "$name: method");
        is($u->{path}, '/api/v2/moderation/ban', "$name: path");
        is($u->{raw_query}, 'api_key=' . $t->api_key, "$name: query");
        is($u->{body}, $want[$i], "$name: body stamped with banned_by_id bob");
        is($u->{status}, 201, "$name: the emulator accepted it") or diag($u->{error});
        is_deeply($t->verify_server_token(($u->{headers}{authorization} || [])->[0]),
            { server => JSON::PP::true }, "$name: signed with the server token");
        upstream_headers_ok($u, $name);
    }
}

my $tight = { rate => '1r/m', burst => 1 };
gateway($t1, $tight);

my $r = $t1->request(GET => '/console/console.js');
is($r->{status}, 200, 'console.js is served next to the page');
$t1->reset_upstream;

my ($bans, $rc, $stderr) = drive($t1, $t1->user_token('bob'), 'bans');
is($rc, 0, 'bans: the browser drove the console') or diag($stderr);
check_bans($t1, 'bans', $bans);

$t1->stop;

# ---------------------------------------------------------------------------
# 2. alice: every other form, and the task poll

my $t2 = gateway(StreamMod::Test->new, { rate => '30r/m', burst => 10 });

my ($acts, $rc2, $stderr2) = drive($t2, $t2->user_token('alice'), 'actions');
is($rc2, 0, 'actions: the browser drove the console') or diag($stderr2);

my $task_id;
SKIP: {
    skip 'no output from the browser', 1 unless $acts;
    page_ok($acts, 'actions', 'none');
    is($acts->{whoami}, 'alice', 'actions: user_id alice');

    my @s = @{ $acts->{steps} };
    my @want = (
        [ unban            => 'POST /moderation/unban?target_user_id=carol {}' ],
        [ mute_users       => 'POST /calls/default/c-1/mute_users '
                              . '{"user_ids":["u-2","u-3"],"audio":true,"video":true}' ],
        [ kick_user        => 'POST /calls/default/c-1/kick {"user_id":"u-4","block":true}' ],
        [ block_user       => 'POST /moderation/block {"blocked_user_id":"u-5"}' ],
        [ deactivate_users => 'POST /moderation/users/deactivate {"user_ids":["u-7","u-8"]}' ],
    );
    is(scalar @s, scalar @want, 'actions: five answers shown');
    for my $i (0 .. $#want) {
        my ($action, $request) = @{ $want[$i] };
        step_is($s[$i], $action, action => $action, request => $request,
            status => '201', code => '', message => '', outcome => 'done');
    }
    ($task_id) = ($s[4]{body} // '') =~ /"task_id": "([^"]+)"/;
    ok($task_id, 'deactivate_users: the answer shows a task_id');

    my $task = $acts->{task} || {};
    ok($task->{visible}, 'task: the task panel is shown');
    is($task->{task_id}, $task_id, 'task: for that task');
    is($task->{state}, 'completed', 'task: polled until completed');
    is($task->{status}, 'completed', 'task: status completed shown');
    is($task->{polls}, '2', 'task: two polls (the emulator answers pending, then completed)');
    is_deeply($task->{history}, [ 'poll 1: pending', 'poll 2: completed' ],
        'task: the progress shows each poll');
    my $result = eval { decode_json($task->{result}) } || {};
    is_deeply($result->{succeeded_user_ids}, [ 'u-7', 'u-8' ], 'task: the result is shown');

    is_deeply([ map { "$_->{action} $_->{status}" } @{ $acts->{log} } ],
        [ 'get_task 200', 'get_task 200', 'deactivate_users 201', 'block_user 201',
          'kick_user 201', 'mute_users 201', 'unban 201' ],
        'actions: the log has every request, polls included, newest first');
}

my @up = $t2->upstream_requests;
my @want_up = (
    [ POST => '/api/v2/moderation/unban', '&target_user_id=carol', '{"unbanned_by_id":"alice"}' ],
    [ POST => '/api/v2/video/call/default/c-1/mute_users', '',
      '{"muted_by_id":"alice","user_ids":["u-2","u-3"],"audio":true,"video":true}' ],
    [ POST => '/api/v2/video/call/default/c-1/kick', '',
      '{"kicked_by_id":"alice","user_id":"u-4","block":true}' ],
    [ POST => '/api/v2/users/block', '', '{"user_id":"alice","blocked_user_id":"u-5"}' ],
    [ POST => '/api/v2/users/deactivate', '', '{"created_by_id":"alice","user_ids":["u-7","u-8"]}' ],
    [ GET  => '/api/v2/tasks/' . ($task_id // '?'), '', '' ],
    [ GET  => '/api/v2/tasks/' . ($task_id // '?'), '', '' ],
);
is(scalar @up, scalar @want_up, 'actions: Stream got one request per action and per poll');
for my $i (0 .. $#want_up) {
    my $u = $up[$i] or next;
    my ($m, $path, $q, $body) = @{ $want_up[$i] };
    my $name = "upstream $m $path";
    is($u->{method}, $m, "$name: method");
    is($u->{path}, $path, "$name: path");
    is($u->{raw_query}, 'api_key=' . $t2->api_key . $q, "$name: query");
    is($u->{body}, $body, "$name: body, stamped with alice");
    like($u->{status}, qr/\A2\d\d\z/, "$name: the emulator accepted it") or diag($u->{error});
    upstream_headers_ok($u, $name);
}

$t2->stop;

# ---------------------------------------------------------------------------
# 3. bob again, the page on another origin (SPEC 8, CORS): the browser
# preflights each request, and can read the gateway's refusals and the
# Retry-After of a 429 only because the gateway says so in its CORS headers

my $page_port = free_port();
my $t3 = gateway(StreamMod::Test->new, $tight, page_port => $page_port);

my ($xbans, $rc3, $stderr3) = drive($t3, $t3->user_token('bob'), 'bans', page_port => $page_port);
is($rc3, 0, 'cross-origin: the browser drove the console') or diag($stderr3);
is($xbans && $xbans->{url}, "http://127.0.0.1:$page_port/console/",
    'cross-origin: the page came from the other origin');
check_bans($t3, 'cross-origin', $xbans);

my @preflights = grep { m{"OPTIONS /moderation/ban HTTP/1\.1" 204 } } split /\n/, $t3->access_log;
ok(@preflights >= 1, 'cross-origin: the gateway answered the preflight with 204')
  or diag($t3->access_log);

$t3->stop;

note(sprintf 'browser test: %.1f s in all', time - $started);

done_testing;
