#!/usr/bin/perl

# Reload under load (SPEC section 2 "nginx -s reload re-reads the secret and
# policy files; limit-zone state survives a reload", section 8 "counters
# ... survive a reload"). Two workers; four clients send bans back to
# back, each by a new moderator, keep-alive off, and a fifth sends mutes,
# while the master reloads five times, about 300 ms apart:
#
#   1. the same configuration
#   2. a second policy file that still allows ban but no longer mute
#   3. the same again
#   4. zone "slow" changes its rate from 1r/m to 2r/m
#   5. the same again
#
# Checked: no request fails (every ban 201; no connection error, no 5xx);
# every mute is 201 when a worker of the first policy answered it and the
# exact 403 APIError when one of the second did (each response carries
# X-Test-Policy from its worker's configuration), all 201 before the
# policy reload and all 403 after it; one audit line per response, matched
# by X-Client-Request-Id, whose decision matches the status; a moderator
# rate-limited before each reload is still limited right after it (the
# rate change shows in Retry-After and in the status output); the status
# counters and the emulator's record add up exactly to the responses.
#
# Not under STREAM_MOD_VALGRIND=1 (master_process off: the harness
# restarts NGINX instead of reloading it).

use strict;
use warnings;

use Test::More;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error);

my $t = StreamMod::Test->new;

plan skip_all => 'STREAM_MOD_VALGRIND=1 runs NGINX with master_process off: a reload is a restart there, '
    . 'so nothing survives it and no traffic can run across it'
    if $t->valgrind eq '1';

my $d = $t->dir;
my $VG = $t->valgrind;
my $TIMEOUT = $VG ? 60 : 10;

my @ACTIONS = qw(ban unban mute unmute block_user unblock_user blocked_users
  deactivate_user reactivate_user deactivate_users reactivate_users
  export_users get_task mute_users block_call_user unblock_call_user
  kick_user update_user_permissions end_call request_permission);
my @COUNTERS = qw(allowed denied limited rejected upstream_2xx upstream_4xx
  upstream_5xx);

$t->write_file('policy-1.json', JSON::PP->new->canonical->encode({
    rules => [ { effect => 'allow', actions => [qw(ban mute)], users => ['*'] } ] }));
$t->write_file('policy-2.json', JSON::PP->new->canonical->encode({
    rules => [ { effect => 'allow', actions => ['ban'], users => ['*'] } ] }));

sub config {
    my (%o) = @_;
    my $policy = $o{policy};
    my $rate = $o{slow_rate};
    my $loc = sub {
        my ($limit) = @_;
        return <<"LOC";
        location /moderation/ {
            stream_mod on;
            $limit
            access_log %%DIR%%/audit.log audit;
            add_header X-Test-Policy p$policy always;
            proxy_pass http://stream_api;
        }
LOC
    };
    return <<"CONF";
http {
@{[ $t->http_preamble ]}
    stream_mod_api_key %%API_KEY%%;
    stream_mod_api_secret_file %%SECRET_FILE%%;
    stream_mod_policy %%DIR%%/policy-$policy.json;

    stream_mod_limit_zone zone=mods:1m rate=600r/m;
    stream_mod_limit_zone zone=slow:1m rate=$rate;

    log_format audit escape=json '{"rid":"\$http_x_client_request_id","action":"\$stream_mod_action","decision":"\$stream_mod_decision","status":\$status,"upstream_status":"\$upstream_status"}';

    upstream stream_api {
        server 127.0.0.1:%%EMU_PORT%%;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
@{[ $loc->('stream_mod_limit zone=mods burst=5;') ]}
        location = /stream_mod/status { stream_mod_status; }
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name lim;
@{[ $loc->('stream_mod_limit zone=slow burst=1;') ]}
    }
}
CONF
}

$t->write_config(config(policy => 1, slow_rate => '1r/m'), workers => 2)->run;

# --------------------------------------------------------------------------
# helpers

sub status {
    my $r = $t->request(GET => '/stream_mod/status', timeout => $TIMEOUT);
    return $r->{json};
}

sub canon { JSON::PP->new->canonical->encode($_[0] // {}) }

# one request; the record line a client writes
sub send_one {
    my ($kind, $rid, %o) = @_;
    my $path = $kind eq 'mute' ? '/moderation/mute' : '/moderation/ban';
    my $json = $kind eq 'mute' ? { target_ids => ['u-2'] } : { target_user_id => 'u-2' };
    my $t0 = time;
    my $user = delete $o{user};
    my $r = $t->request(POST => $path, token => $t->user_token($user // $rid), json => $json,
        headers => [ 'X-Client-Request-Id' => $rid ], timeout => $TIMEOUT * 3, %o);
    return {
        rid => $rid, kind => $kind, status => $r->{status} // 'none', t0 => $t0, t1 => time,
        policy => ($r->{headers}{'x-test-policy'} // [])->[0] // '',
        retry => ($r->{headers}{'retry-after'} // [])->[0] // '',
        rl => join(',', map { @{ $r->{headers}{$_} // [] } } qw(x-ratelimit-limit x-ratelimit-remaining)),
        body => $r->{body} // '', error => $r->{error} // '',
    };
}

my $js = JSON::PP->new->canonical;

# complete lines only: a client may be writing the last one
sub read_records {
    my ($file) = @_;
    open my $fh, '<:raw', $file or return ();
    return map { eval { $js->decode($_) } // () } grep { /\S/ && /\n\z/ } <$fh>;
}

# --------------------------------------------------------------------------
# the moderator who stays limited: two bans pass (burst=1), the third not

my @own;    # the requests this process sends (lim), recorded like the clients'

for my $i (1 .. 3) {
    push @own, send_one(ban => "lim-prime-$i", user => 'lim', host => 'lim');
}
is(join(' ', map { $_->{status} } @own), '201 201 429',
    'moderator lim, three bans on zone slow (1r/m, burst=1) -> 201 201 429');

# --------------------------------------------------------------------------
# the clients

my $stop = "$d/stop-clients";
my %kids;    # pid => record file
my $parent = $$;
END { local $?; if ($$ == $parent && %kids) { kill 'KILL', keys %kids; waitpid($_, 0) for keys %kids } }

for my $c ('ban1', 'ban2', 'ban3', 'ban4', 'mute1') {
    my $file = "$d/client-$c.jsonl";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open my $out, '>>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        my $kind = $c =~ /\Amute/ ? 'mute' : 'ban';
        my $n = 0;
        my $deadline = time + ($VG ? 900 : 120);
        until (-e $stop || getppid() != $parent || time > $deadline) {
            $n++;
            print $out $js->encode(send_one($kind, "$c-$n")), "\n";
        }
        POSIX::_exit(0);
    }
    $kids{$pid} = $c;
}

sub records_so_far { map { [ read_records("$d/client-$_.jsonl") ] } values %kids }

# every client has answers before the first reload
my $end = time + ($VG ? 120 : 20);
sleep 0.05 while time < $end && grep { @$_ < 3 } records_so_far();
ok(!grep({ @$_ < 3 } records_so_far()), 'the five clients are running (3 answers each) before the first reload');

# --------------------------------------------------------------------------
# five reloads

my @reloads = (
    [ 'the same configuration',                 policy => 1, slow_rate => '1r/m' ],
    [ 'policy-2.json: mute no longer allowed',  policy => 2, slow_rate => '1r/m' ],
    [ 'the same configuration',                 policy => 2, slow_rate => '1r/m' ],
    [ 'zone slow: rate 1r/m -> 2r/m',           policy => 2, slow_rate => '2r/m' ],
    [ 'the same configuration',                 policy => 2, slow_rate => '2r/m' ],
);

my @windows;    # [hup, done] per reload
my $prev = status();
my $mono = 1;
my @retry;      # lim's Retry-After before/after each reload

sub not_less {
    my ($a, $b) = @_;
    for my $x (@ACTIONS) {
        for my $c (@COUNTERS) { return 0 if $b->{actions}{$x}{$c} < $a->{actions}{$x}{$c} }
    }
    return 1;
}

for my $k (1 .. @reloads) {
    my ($what, %cfg) = @{ $reloads[ $k - 1 ] };

    my $before = send_one(ban => "lim-$k-before", user => 'lim', host => 'lim');
    push @own, $before;

    my $hup = time;
    my $ok = $t->reload(config(%cfg), workers => 2);
    my $done = time;
    push @windows, [ $hup, $done ];
    ok($ok, "reload $k ($what): new workers run, the old ones are gone");

    my $after = send_one(ban => "lim-$k-after", user => 'lim', host => 'lim');
    push @own, $after;
    is("$before->{status} $after->{status}", '429 429',
        "reload $k ($what): ban by the rate-limited moderator lim -> 429 just before and 429 just after");
    push @retry, [ $before->{retry}, $after->{retry} ];

    my $s = status();
    ok($s && not_less($prev, $s), "reload $k: GET /stream_mod/status -> 200, no counter went back");
    $mono &&= $s && not_less($prev, $s);
    $prev = $s if $s;
    is($s->{zones}{slow}{rate}, $cfg{slow_rate}, "reload $k: status shows zone slow at rate $cfg{slow_rate}");

    sleep 0.3;
}

# Retry-After of lim's kept bucket. After two bans (burst=1) the bucket
# holds one request's excess, and the next ban passes once that has
# leaked. NGINX's units: 1r/m is 16 and 2r/m 33 thousandths of a request
# per second, so the wait is 1000/16 - D = 62.5 - D s at 1r/m and
# 1000/33 - D = 30.3 - D s at 2r/m, D the time since the second ban (all
# of D leaks at the rate the worker has now). A bucket reset by a reload
# would answer 201; one still leaking at the old rate, ~62 - D.
my ($p0, $p1) = ($own[1]{t0}, $own[1]{t1});
# the checks: before/after reloads 1..5; 2r/m from the one after reload 4
my @rate_of = ((1000 / 16) x 7, (1000 / 33) x 3);
my @checks = grep { $_->{rid} =~ /\Alim-\d-/ } @own;
my @off;
for my $i (0 .. $#checks) {
    my $c = $checks[$i];
    my $lo = POSIX::ceil($rate_of[$i] - ($c->{t1} - $p0)) - 1;
    my $hi = POSIX::ceil($rate_of[$i] - ($c->{t0} - $p1)) + 1;
    push @off, "$c->{rid}: Retry-After $c->{retry}, expected $lo..$hi"
        unless $c->{retry} =~ /\A\d+\z/ && $c->{retry} >= $lo && $c->{retry} <= $hi;
}
is(scalar @off, 0, "lim's ten 429s: Retry-After from the kept bucket, ~62.5 s less the time since the "
    . 'second ban at 1r/m, ~30.3 s less it at 2r/m (reload 4 on)')
    or diag(join "\n", @off);
my $e429 = canon(api_error(429, 9, 'rate limit exceeded (zone slow)'));
my @bad429 = grep { $_->{status} eq '429'
    && !(canon(eval { JSON::PP->new->utf8->decode($_->{body}) }) eq $e429 && $_->{rl} eq '2,0') } @own;
is(scalar @bad429, 0, "lim's 429s -> each {\"code\":9,\"message\":\"rate limit exceeded (zone slow)\",...} "
    . 'with X-RateLimit-Limit 2, X-RateLimit-Remaining 0')
    or diag(explain(\@bad429));
ok($retry[3][1] < $retry[3][0] / 2 + 1, "zone slow 1r/m -> 2r/m: lim's Retry-After drops from "
    . "$retry[3][0] to $retry[3][1] across reload 4");

# traffic goes on a little, then stops
sleep 0.3;
$t->write_file($stop, '');
$end = time + ($VG ? 300 : 30);
while (%kids && time < $end) {
    for my $pid (keys %kids) {
        next unless waitpid($pid, POSIX::WNOHANG()) == $pid;
        is($?, 0, "client $kids{$pid} stopped when told, exit status 0");
        delete $kids{$pid};
    }
    sleep 0.05;
}
ok(!%kids, 'every client stopped');
kill 'KILL', keys %kids if %kids;

# --------------------------------------------------------------------------
# what the clients got

my (%by_client, @all);
for my $f (glob "$d/client-*.jsonl") {
    my ($c) = $f =~ /client-(\w+)\.jsonl\z/;
    $by_client{$c} = [ read_records($f) ];
    push @all, @{ $by_client{$c} };
}
my @bans = grep { $_->{kind} eq 'ban' } @all;
my @mutes = grep { $_->{kind} eq 'mute' } @all;

diag(sprintf '%d bans, %d mutes across %d reloads', scalar @bans, scalar @mutes, scalar @windows)
    if $ENV{TEST_VERBOSE};

for my $i (0 .. $#windows) {
    my ($hup, $done) = @{ $windows[$i] };
    my $n = grep { $_->{t0} < $done && $_->{t1} > $hup } @all;
    ok($n > 0, 'reload ' . ($i + 1) . ": requests were in flight during it ($n)");
}

my @bad_bans = grep { $_->{status} ne '201' } @bans;
is(scalar @bad_bans, 0, scalar(@bans) . ' bans by new moderators during the reloads -> every one 201 '
    . '(no connection error, no 5xx)')
    or diag(explain([ @bad_bans[ 0 .. ($#bad_bans < 9 ? $#bad_bans : 9) ] ]));
is(scalar(grep { !@{ $by_client{$_} } } qw(ban1 ban2 ban3 ban4)), 0, 'each of the four ban clients got answers');

# the mutes: 201 under policy 1, the exact 403 under policy 2
my $deny = api_error(403, 17, 'denied: no rule allows mute (default)');
my @odd = grep {
    !(($_->{status} eq '201' && $_->{policy} eq 'p1')
      || ($_->{status} eq '403' && $_->{policy} eq 'p2'
          && canon(eval { JSON::PP->new->utf8->decode($_->{body}) }) eq canon($deny)))
} @mutes;
is(scalar @odd, 0, scalar(@mutes) . ' mutes -> 201 from a worker with policy-1.json, or 403 '
    . '{"code":17,"message":"denied: no rule allows mute (default)",...} from one with policy-2.json; nothing else')
    or diag(explain([ @odd[ 0 .. ($#odd < 9 ? $#odd : 9) ] ]));

my ($hup2, $done2) = @{ $windows[1] };
my @pre = grep { $_->{t1} < $hup2 } @mutes;
my @post = grep { $_->{t0} > $done2 } @mutes;
ok(@pre && !grep({ $_->{status} ne '201' } @pre),
    scalar(@pre) . ' mutes answered before the policy reload -> all 201');
ok(@post && !grep({ $_->{status} ne '403' } @post),
    scalar(@post) . ' mutes sent after the policy reload completed -> all 403');

# in order: 201s, then 403s. While reload 2 runs, the master has started
# the new workers (policy 2) and sleeps 100 ms before it tells the old ones
# (policy 1) to quit; both accept meanwhile, so a 201 may follow a 403
# then, and only then.
my @seq = sort { $a->{t0} <=> $b->{t0} } @mutes;
my ($seen403, @late, $flips) = (0);
for my $m (@seq) {
    $seen403 ||= $m->{status} eq '403';
    next unless $seen403 && $m->{status} eq '201';
    $flips++;
    push @late, $m if $m->{t0} > $done2;
}
ok(!@late && $seq[0]{status} eq '201' && $seq[-1]{status} eq '403',
    'the mute client: 201s first, 403s last, never an error; a 201 after a 403 only while reload 2 ran'
    . ' (' . ($flips // 0) . ' times this run)')
    or diag(explain(\@late));

# --------------------------------------------------------------------------
# the audit log: one line per response, matched by request id

my @responses = (@all, @own);
my @lines;
$end = time + ($VG ? 30 : 5);
while (1) {
    # complete lines only: a line being written may be read half-way
    (my $text = $t->slurp("$d/audit.log")) =~ s/[^\n]*\z//;
    @lines = grep { /\S/ } split /\n/, $text;
    last if @lines >= @responses || time > $end;
    sleep 0.05;
}
is(scalar @lines, scalar @responses,
    'audit.log: as many lines as responses recorded (' . scalar(@responses) . '), none lost');

my %line;
my $dup = 0;
for (@lines) {
    my $j = eval { JSON::PP->new->utf8->decode($_) } or next;
    $dup++ if $line{ $j->{rid} }++;
    $line{ $j->{rid} } = $j;
}
is($dup, 0, 'audit.log: no request id twice');

my %decision = (201 => 'allow', 403 => 'deny', 429 => 'limit');
my @mismatch;
for my $r (@responses) {
    my $l = $line{ $r->{rid} };
    my $want = { rid => $r->{rid}, action => $r->{kind}, decision => $decision{ $r->{status} } // '?',
        status => $r->{status}, upstream_status => $r->{status} eq '201' ? '201' : '' };
    push @mismatch, { want => $want, got => $l } unless $l && canon($l) eq canon($want);
}
is(scalar @mismatch, 0, 'audit.log: each response has its line; 201 -> allow (upstream 201), '
    . '403 -> deny, 429 -> limit')
    or diag(explain([ @mismatch[ 0 .. ($#mismatch < 9 ? $#mismatch : 9) ] ]));

# --------------------------------------------------------------------------
# the counters and the emulator add up

my $n = sub { my ($kind, $st) = @_; scalar grep { $_->{kind} eq $kind && $_->{status} eq $st } @responses };
my %expected = map { my $a = $_; $a => { map { $_ => 0 } @COUNTERS } } @ACTIONS;
$expected{ban}{allowed} = $expected{ban}{upstream_2xx} = $n->(ban => 201);
$expected{ban}{limited} = $n->(ban => 429);
$expected{mute}{allowed} = $expected{mute}{upstream_2xx} = $n->(mute => 201);
$expected{mute}{denied} = $n->(mute => 403);

my $s;
$end = time + ($VG ? 30 : 5);
while (1) {
    $s = status() // {};
    last if canon($s->{actions}) eq canon(\%expected) || time > $end;
    sleep 0.05;
}
ok($mono && not_less($prev, $s), 'status counters never went back across the reloads');
is_deeply($s->{actions}, \%expected, 'status after five reloads: ban allowed/upstream_2xx = the 201 bans, '
    . 'limited = the 429s; mute allowed/upstream_2xx = the 201 mutes, denied = the 403s; all else 0')
    or diag(explain({ ban => $s->{actions}{ban}, mute => $s->{actions}{mute},
        expected_ban => $expected{ban}, expected_mute => $expected{mute} }));
my $sum = 0;
$sum += $s->{actions}{$_}{allowed} + $s->{actions}{$_}{denied} + $s->{actions}{$_}{limited}
    + $s->{actions}{$_}{rejected} for @ACTIONS;
is($sum, scalar @responses, 'status: allowed+denied+limited+rejected over all actions = responses recorded');
is_deeply($s->{unrouted}, { rejected => 0 }, 'status: unrouted.rejected 0');

# every moderator that passed the policy on the default server got a bucket
# in zone mods once: held now, or expired since (600r/m drains in 100 ms)
my $mods = $s->{zones}{mods} // {};
my $mods_keys = grep { $_->{status} eq '201' } @all;
is($mods->{entries} + $mods->{expired} + $mods->{evictions}, $mods_keys,
    "zone mods: entries + expired + evictions = the $mods_keys moderators who passed the policy");
is_deeply([ @{ $s->{zones}{slow} // {} }{qw(entries full_refusals rate)} ], [ 1, 0, '2r/m' ],
    'zone slow: still the one bucket of lim, rate 2r/m');

my $forwarded = grep { $_->{status} eq '201' } @responses;
is($t->upstream_count, $forwarded, "the emulator got exactly the $forwarded requests answered 201, once each");

$t->stop;

done_testing;
