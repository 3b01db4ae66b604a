#!/usr/bin/perl

# The status endpoint (SPEC section 8, docs/audit.md "Status endpoint" and
# "Prometheus"): stream_mod_status answers JSON with the version, every
# action of SPEC section 4 with its decision and upstream counters, the
# unrouted refusals and the limit zones; ?format=prometheus the same
# figures in the Prometheus text format.  A known mix of requests is
# counted exactly; other formats are 400, other methods 405.  With two
# workers the counters are exact across workers and survive a reload.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test;

my $t = StreamMod::Test->new;

# two workers, unless valgrind runs NGINX as a single process
my $workers = $t->valgrind eq '1' ? 1 : 2;

my @ACTIONS = qw(ban unban mute unmute block_user unblock_user blocked_users
  deactivate_user reactivate_user deactivate_users reactivate_users
  export_users get_task mute_users block_call_user unblock_call_user
  kick_user update_user_permissions end_call request_permission);

my @COUNTERS = qw(allowed denied limited rejected upstream_2xx upstream_4xx
  upstream_5xx);

$t->write_policy({
    rules => [
        { effect => 'deny', actions => ['ban'], users => ['*'],
          when => { ip_ban => JSON::PP::true } },
        { effect => 'allow', actions => ['*'], users => ['*'] },
    ],
});

# reuseport: the kernel spreads connections over the workers
my $config = $t->default_config(
    http => "    stream_mod_limit_zone zone=mods:1m rate=6r/m;\n"
      . "    log_format pids '\$pid \$stream_mod_action \$stream_mod_decision \$status';",
    location => "            stream_mod_limit zone=mods burst=1 per=action;\n"
      . "            access_log %%DIR%%/pids.log pids;",
    server => "        location = /stream_mod/status { stream_mod_status; }",
);
$config =~ s/listen 127\.0\.0\.1:%%PORT%%;/listen 127.0.0.1:%%PORT%% reuseport;/
    or die 'no listen line';

$t->write_config($config, workers => $workers)->run;

# --------------------------------------------------------------------------
# helpers

my %tokens;
sub tok { $tokens{ $_[0] } //= $t->user_token($_[0]) }

sub ban {
    my ($token, %extra) = @_;
    return $t->request(POST => '/moderation/ban', token => $token,
        json => { target_user_id => 'target-1', %extra });
}

sub status_raw {
    my ($query) = @_;
    return $t->request(GET => '/stream_mod/status' . ($query // ''));
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    return <$fh> // '';
}

sub zeros { return { map { $_ => 0 } @COUNTERS } }

# The counters are updated when a request is logged, which may come a
# moment after its response reached us (another worker may answer the
# status request first): poll until the figures match, then compare.
sub status_matching {
    my ($want) = @_;
    my $s;
    my $end = time + 3;
    while (1) {
        $s = status_raw()->{json} // {};
        last if time > $end || eq_deeply_quiet($s->{actions}, $want);
        sleep 0.05;
    }
    return $s;
}

sub eq_deeply_quiet {
    my ($a, $b) = @_;
    my $js = JSON::PP->new->canonical;
    return $js->encode($a // {}) eq $js->encode($b // {});
}

my %expected = map { $_ => zeros() } @ACTIONS;

# --------------------------------------------------------------------------
# before any request: every action present, in SPEC order, all zero

my $r = status_raw();
is($r->{status}, 200, 'GET /stream_mod/status: 200');
is_deeply($r->{headers}{'content-type'}, ['application/json'],
    'GET /stream_mod/status: Content-Type application/json');
ok(ref $r->{json} eq 'HASH', 'GET /stream_mod/status: a JSON object')
    or diag($r->{body});
is($r->{json}{version}, '0.1.0', 'status: version 0.1.0');

my @order = $r->{body} =~ /"(\w+)":\{"allowed":/g;
is_deeply(\@order, \@ACTIONS, 'status: the 20 actions of SPEC section 4, in its order');
is_deeply($r->{json}{actions}, \%expected,
    'status: every action has allowed, denied, limited, rejected, upstream_2xx/4xx/5xx at 0');
is_deeply($r->{json}{unrouted}, { rejected => 0 }, 'status: unrouted.rejected 0');
is_deeply($r->{json}{zones}, {
    mods => { size => 1048576, entries => 0, evictions => 0, expired => 0,
              full_refusals => 0, dry_run_hits => 0, rate => '6r/m' },
}, 'status: zone mods with its exact size (1m = 1048576) and zero figures');

# --------------------------------------------------------------------------
# a known mix

$t->reset_upstream;

my $bob = tok('bob');

$r = ban($bob);
is($r->{status}, 201, 'ban by bob: 201');
$r = ban($bob);
is($r->{status}, 201, 'second ban by bob: 201 (burst=1)');
$expected{ban}{allowed} = 2;
$expected{ban}{upstream_2xx} = 2;

$r = ban($bob, ip_ban => JSON::PP::true);
is($r->{status}, 403, 'ban with ip_ban by bob: 403 (denied by rule 1)');
$expected{ban}{denied} = 1;

$r = ban($t->token({ user_id => 'bob' }, secret => 'wrong-secret'));
is($r->{status}, 401, 'ban with a forged token: 401');
$expected{ban}{rejected} = 1;

$r = ban($bob);
is($r->{status}, 429, 'third quick ban by bob: 429');
$expected{ban}{limited} = 1;

is($t->upstream_count, 2, 'only the two allowed bans reached the upstream');

# Stream answers the mute with 500, the kick with 400: passed through
$t->emu_control({ status => 500,
    body => { code => -1, message => 'emulated failure', StatusCode => 500 } });
$r = $t->request(POST => '/moderation/mute', token => $bob,
    json => { target_ids => ['target-1'] });
is($r->{status}, 500, 'mute by bob, Stream answers 500: 500 passed through');
is($r->{json}{message}, 'emulated failure', 'mute: Stream\'s body passed through');
$expected{mute}{allowed} = 1;
$expected{mute}{upstream_5xx} = 1;

$t->emu_control({ status => 400,
    body => { code => 4, message => 'emulated input error', StatusCode => 400 } });
$r = $t->request(POST => '/calls/default/c-1/kick', token => $bob,
    json => { user_id => 'target-1' });
is($r->{status}, 400, 'kick by bob, Stream answers 400: 400 passed through');
is($r->{json}{message}, 'emulated input error', 'kick: Stream\'s body passed through');
$expected{kick_user}{allowed} = 1;
$expected{kick_user}{upstream_4xx} = 1;
$t->emu_control(undef);

is($t->upstream_count, 4, 'the mute and the kick reached the upstream');

# refused before an action is known
$r = $t->request(POST => '/moderation/nope', token => $bob, json => {});
is($r->{status}, 404, 'POST /moderation/nope: 404');

# --------------------------------------------------------------------------
# the figures

my $s = status_matching(\%expected);
is_deeply($s->{actions}, \%expected, 'status: every action counter is exact after the mix')
    or diag(explain($s->{actions}));
is_deeply($s->{unrouted}, { rejected => 1 }, 'status: unrouted.rejected 1 (the 404)');
is_deeply($s->{zones}, {
    mods => { size => 1048576, entries => 3, evictions => 0, expired => 0,
              full_refusals => 0, dry_run_hits => 0, rate => '6r/m' },
}, 'status: zone mods holds 3 buckets (bob: ban, mute, kick_user with per=action)');

# reading the status is not counted
status_raw() for 1 .. 3;
is_deeply(status_raw()->{json}{actions}, \%expected, 'status requests are not counted');

# ?format=json is the same document
$r = status_raw('?format=json');
is($r->{status}, 200, 'GET /stream_mod/status?format=json: 200');
is_deeply($r->{json}{actions}, \%expected, '?format=json: the same counters');

# HEAD: headers only
$r = $t->request(HEAD => '/stream_mod/status');
is($r->{status}, 200, 'HEAD /stream_mod/status: 200');
is($r->{body}, '', 'HEAD /stream_mod/status: no body');

# --------------------------------------------------------------------------
# Prometheus

$r = status_raw('?format=prometheus');
is($r->{status}, 200, 'GET ?format=prometheus: 200');
is_deeply($r->{headers}{'content-type'}, ['text/plain; version=0.0.4'],
    '?format=prometheus: Content-Type text/plain; version=0.0.4');

my @FAMILIES = (
    [ stream_mod_requests_total           => 'counter' ],
    [ stream_mod_upstream_responses_total => 'counter' ],
    [ stream_mod_zone_size_bytes          => 'gauge' ],
    [ stream_mod_zone_entries             => 'gauge' ],
    [ stream_mod_zone_evictions_total     => 'counter' ],
    [ stream_mod_zone_full_refusals_total => 'counter' ],
    [ stream_mod_zone_dry_run_hits_total  => 'counter' ],
);

# parse: HELP then TYPE then the family's samples, family after family
my (%help, %type, %sample, @fam_order, @bad);
my $current;
for my $line (split /\n/, $r->{body}) {
    if ($line =~ /\A# HELP (\w+) \S/) {
        push @bad, "HELP $1 twice" if $help{$1}++;
        push @fam_order, $1;
        $current = undef;
    } elsif ($line =~ /\A# TYPE (\w+) (counter|gauge)\z/) {
        push @bad, "TYPE $1 without its HELP just before"
            unless @fam_order && $fam_order[-1] eq $1 && !defined $current;
        $type{$1} = $2;
        $current = $1;
    } elsif ($line =~ /\A(\w+)\{([^}]*)\} (\d+)\z/) {
        my ($name, $labels, $v) = ($1, $2, $3);
        push @bad, "sample $name outside its family" unless defined $current && $current eq $name;
        push @bad, "sample $name\{$labels\} twice" if exists $sample{$name}{$labels};
        $sample{$name}{$labels} = $v;
    } else {
        push @bad, "unexpected line: $line";
    }
}
is("@bad", '', '?format=prometheus: every family is HELP, TYPE, then its samples, grouped');
is_deeply(\@fam_order, [ map { $_->[0] } @FAMILIES ], '?format=prometheus: the seven metric families');
is_deeply(\%type, { map { @$_ } @FAMILIES }, '?format=prometheus: the family types');

my %want_req;
for my $a (@ACTIONS) {
    my $c = $expected{$a};
    $want_req{qq(action="$a",decision="allow")}  = $c->{allowed};
    $want_req{qq(action="$a",decision="deny")}   = $c->{denied};
    $want_req{qq(action="$a",decision="limit")}  = $c->{limited};
    $want_req{qq(action="$a",decision="reject")} = $c->{rejected};
}
$want_req{q(action="none",decision="reject")} = 1;
is_deeply($sample{stream_mod_requests_total}, \%want_req,
    '?format=prometheus: stream_mod_requests_total, every action and decision, exact');
is($sample{stream_mod_requests_total}{q(action="ban",decision="allow")}, 2,
    'stream_mod_requests_total{action="ban",decision="allow"} 2');

my %want_up;
for my $a (@ACTIONS) {
    $want_up{qq(action="$a",class="$_")} = $expected{$a}{"upstream_$_"} for qw(2xx 4xx 5xx);
}
is_deeply($sample{stream_mod_upstream_responses_total}, \%want_up,
    '?format=prometheus: stream_mod_upstream_responses_total, every action and class, exact');
like($r->{body}, qr/^stream_mod_upstream_responses_total\{action="mute",class="5xx"\} 1$/m,
    'stream_mod_upstream_responses_total{action="mute",class="5xx"} 1');

is_deeply({ map { $_ => $sample{$_} } grep { /zone/ } keys %sample }, {
    stream_mod_zone_size_bytes          => { 'zone="mods"' => 1048576 },
    stream_mod_zone_entries             => { 'zone="mods"' => 3 },
    stream_mod_zone_evictions_total     => { 'zone="mods"' => 0 },
    stream_mod_zone_full_refusals_total => { 'zone="mods"' => 0 },
    stream_mod_zone_dry_run_hits_total  => { 'zone="mods"' => 0 },
}, '?format=prometheus: the zone gauges');

# --------------------------------------------------------------------------
# other formats and methods

$r = status_raw('?format=bogus');
is($r->{status}, 400, 'GET ?format=bogus: 400');

$r = status_raw('?format=');
is($r->{status}, 400, 'GET ?format= (empty): 400');

$r = $t->request(POST => '/stream_mod/status', json => {});
is($r->{status}, 405, 'POST /stream_mod/status: 405');

$r = $t->request(DELETE => '/stream_mod/status');
is($r->{status}, 405, 'DELETE /stream_mod/status: 405');

is_deeply(status_raw()->{json}{actions}, \%expected,
    'refused status requests change no counter');

# --------------------------------------------------------------------------
# two workers: exact across workers, and across a reload

SKIP: {
    skip 'STREAM_MOD_VALGRIND=1 runs one process, and its reload restarts NGINX', 12
        if $t->valgrind eq '1';

    $t->write_file('pids.log', '');
    $t->reset_upstream;

    # 40 requests, each on its own connection: 20 allowed, 10 denied,
    # 10 rejected, by 20 moderators
    my $forged = $t->token({ user_id => 'w0' }, secret => 'wrong-secret');
    my @st;
    for my $i (0 .. 39) {
        my $u = 'w' . ($i % 20);
        if ($i < 20) {
            push @st, ban(tok($u))->{status};
        } elsif ($i < 30) {
            push @st, ban(tok($u), ip_ban => JSON::PP::true)->{status};
        } else {
            push @st, ban($forged)->{status};
        }
    }
    is("@st", join(' ', (201) x 20, (403) x 10, (401) x 10),
        '40 requests: 20 allowed (201), 10 denied (403), 10 rejected (401)');
    is($t->upstream_count, 20, '40 requests: the 20 allowed reached the upstream');

    $expected{ban}{allowed} += 20;
    $expected{ban}{upstream_2xx} += 20;
    $expected{ban}{denied} += 10;
    $expected{ban}{rejected} += 10;

    $s = status_matching(\%expected);
    is_deeply($s->{actions}, \%expected, 'two workers: every counter is exact')
        or diag(explain($s->{actions}{ban}));
    is($s->{zones}{mods}{entries}, 23, 'two workers: zone mods holds 23 buckets');

    # complete lines only: a line being written may be read half-way
    (my $text = slurp($t->dir . '/pids.log')) =~ s/[^\n]*\z//;
    my %pids = map { (split ' ')[0] => 1 } grep { /\S/ } split /\n/, $text;
    is(scalar keys %pids, 2, 'the 40 requests were served by both workers')
        or diag(join ' ', keys %pids);

    # reload: the counters are kept, then count on
    my $before = status_raw()->{json};
    ok($t->reload($config, workers => $workers), 'reload');
    my $after = status_raw()->{json};
    is_deeply($after->{actions}, $before->{actions}, 'reload: the action counters are kept');
    is_deeply($after->{unrouted}, $before->{unrouted}, 'reload: unrouted is kept');
    is_deeply($after->{zones}, $before->{zones}, 'reload: the zone figures are kept');

    $r = ban(tok('z1'));
    is($r->{status}, 201, 'a ban after the reload: 201');
    $expected{ban}{allowed}++;
    $expected{ban}{upstream_2xx}++;
    $s = status_matching(\%expected);
    is_deeply($s->{actions}, \%expected, 'after the reload the counters increase from the kept values');
    is_deeply($s->{unrouted}, { rejected => 1 }, 'after the reload unrouted.rejected is still 1');
}

$t->stop;

done_testing;
