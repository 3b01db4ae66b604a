#!/usr/bin/perl

# The per-worker cache of verified tokens: a repeated token skips the HMAC
# and the JSON parse, but every time claim is checked again on each use,
# and a token that differs in any byte from a cached one is verified anew.

use strict;
use warnings;

use Test::More;

use lib 't/lib';
use StreamMod::Test;

my $t = StreamMod::Test->new;

$t->write_policy({
    rules => [
        { effect => 'allow', actions => ['ban'], users => ['*'] },
    ],
});

$t->write_config($t->default_config(location => 'stream_mod_token_leeway 0;'))
    ->run;

sub ban {
    my ($token) = @_;
    return $t->request(POST => '/moderation/ban', token => $token,
        json => { target_user_id => 'u-2' });
}

# the same token, many times: every use is stamped with its own user

my $tok = $t->user_token('mod-1');

for my $i (1 .. 5) {
    $t->reset_upstream;
    my $r = ban($tok);
    is($r->{status}, 201, "use $i of the same token: 201");
    like($t->last_upstream->{body} // '', qr/\A\{"banned_by_id":"mod-1",/,
        "use $i: the actor is the token's user");
}

# two users whose tokens are both cached keep their identities

my $tok2 = $t->user_token('mod-2');
ban($tok2);
$t->reset_upstream;
is(ban($tok2)->{status}, 201, 'a second cached token: 201');
like($t->last_upstream->{body}, qr/"banned_by_id":"mod-2"/,
    'the second cached token acts as its own user');

# a cached token with one byte of its signature changed: verified anew

(my $forged = $tok) =~ s/(.)\z/$1 eq 'A' ? 'B' : 'A'/e;
$t->reset_upstream;
my $r = ban($forged);
is($r->{status}, 401, 'a cached token with its last byte changed: 401');
is($r->{json}{code}, 43, '... code 43, bad signature');
is($t->upstream_count, 0, '... nothing upstream');

# the same payload and header, signed with another key: 43 as well

$r = ban($t->token({ user_id => 'mod-1', exp => time + 3600 },
    secret => 'another-secret'));
is($r->{status}, 401, 'the same claims signed with another key: 401');
is($r->{json}{code}, 43, '... code 43');

# exp is checked on every use, also for a cached token

my $short = $t->user_token('mod-3', exp => time + 2);
is(ban($short)->{status}, 201, 'a token expiring in 2 s: 201 (now cached)');

sleep 3;

$t->reset_upstream;
$r = ban($short);
is($r->{status}, 401, 'the cached token after its exp: 401');
is($r->{json}{code}, 40, '... code 40, expired');
is($t->upstream_count, 0, '... nothing upstream');

$t->stop;

done_testing;
