#!/usr/bin/perl

# Request bodies (SPEC section 4, "Bodies" and "Actor stamping"): the
# Content-Type a body needs (415), the size limit by Content-Length and
# while a chunked body arrives (413), bodies NGINX spools to a temporary
# file, Expect: 100-continue, malformed and non-object JSON, duplicate
# keys, invalid UTF-8 and NUL, numbers out of range, deep nesting, the
# schema of each action (types, required fields, array bounds, enums, user
# ids), field names that Stream's case-insensitive decoder would match,
# unknown fields kept byte for byte, and the actor field: stamped when
# absent, kept when equal, refused when different or given as a user
# object. Every refusal is checked for the exact APIError and for nothing
# having reached the emulator; every accepted body for what reached it.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use IO::Select;
use JSON::PP;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use StreamMod::Test qw(mint_jwt b64url api_error_ok);

my $t = StreamMod::Test->new;

$t->write_policy({
    rules => [
        { effect => 'allow', actions => ['*'], users => ['mod-1'] },
    ],
});

# /moderation/unmute: a 1k body limit; /moderation/ban: bodies over 1k are
# spooled to a temporary file by NGINX

$t->write_config($t->default_config(server => <<'CONF'));
        location = /moderation/unmute {
            stream_mod on;
            stream_mod_max_body_size 1k;
            proxy_pass http://stream_api;
        }

        location = /moderation/ban {
            stream_mod on;
            client_body_buffer_size 1k;
            proxy_pass http://stream_api;
        }
CONF

$t->run;

my $CALLER = 'mod-1';
my $TOKEN = $t->user_token($CALLER);
my $JSON = 'application/json';
my $TIMEOUT = $t->valgrind ? 60 : 10;

###############################################################################
# helpers

# send; expect a gateway refusal and nothing upstream
sub refused {
    my ($name, $method, $path, %o) = @_;
    my ($status, $code, $message) = @{ delete $o{expect} };

    $t->reset_upstream;
    my $r = $t->request($method, $path, token => $TOKEN, %o);
    api_error_ok($r, $name, $status, $code, $message);
    is($t->upstream_count, 0, "$name: nothing reached Stream");
    return $r;
}

# a JSON body with a Content-Type
sub bad_body {
    my ($name, $path, $body, @expect) = @_;
    return refused($name, POST => $path, body => $body,
        headers => ['Content-Type' => $JSON], expect => \@expect);
}

# send; expect exactly one upstream request with this body, accepted
sub forwarded {
    my ($name, $method, $path, %o) = @_;
    my $upath = delete $o{upath};
    my $ubody = delete $o{ubody};
    my $status = delete $o{status} // 201;

    $t->reset_upstream;
    my $r = $t->request($method, $path, token => $TOKEN, %o);
    is($r->{status}, $status, "$name: answered $status")
        or diag($r->{body});

    my @up = $t->upstream_requests;
    is(scalar @up, 1, "$name: one request reached Stream");
    my $u = $up[-1] or return;
    is($u->{path}, $upath, "$name: upstream path $upath");
    is($u->{body}, $ubody, "$name: upstream body byte for byte");
    is_deeply($u->{headers}{'content-length'}, [length $ubody],
        "$name: upstream Content-Length matches the body");
    is($u->{status}, $status, "$name: Stream accepted it")
        or diag($u->{error});
    return ($r, $u);
}

# a raw exchange on one connection: the head, then (when NGINX answers
# "100 Continue") the body; returns (got 100, final response)
sub expect_exchange {
    my ($head, $body) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
        Proto => 'tcp', Timeout => $TIMEOUT) or die "connect: $@";
    binmode $s;
    local $SIG{PIPE} = 'IGNORE';
    syswrite($s, $head);

    my $sel = IO::Select->new($s);
    my $buf = '';
    my $end = time + $TIMEOUT;

    while (index($buf, "\r\n\r\n") < 0 && time < $end) {
        last unless $sel->can_read($end - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }

    my $continue = 0;

    if ($buf =~ s{\AHTTP/1\.1 100 Continue\r\n\r\n}{}) {
        $continue = 1;
        syswrite($s, $body);
    }

    while (time < $end) {
        last if parse_response($buf);
        last unless $sel->can_read($end - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }

    close $s;
    return ($continue, parse_response($buf) || { status => undef, raw => $buf });
}

sub parse_response {
    my ($buf) = @_;
    my $hend = index($buf, "\r\n\r\n");
    return if $hend < 0;
    my ($status_line, @lines) = split /\r\n/, substr($buf, 0, $hend);
    my ($status) = $status_line =~ m{\AHTTP/1\.[01] (\d{3})} or return;
    my %h;
    for (@lines) {
        my ($n, $v) = /\A([^:]+):\s*(.*?)\s*\z/ or next;
        push @{ $h{ lc $n } }, $v;
    }
    my $cl = $h{'content-length'} ? $h{'content-length'}[0] : undef;
    my $body = substr($buf, $hend + 4);
    return if !defined $cl || length $body < $cl;
    $body = substr($body, 0, $cl);
    return { status => $status, headers => \%h, body => $body,
             json => eval { JSON::PP->new->utf8->decode($body) } };
}

sub chunked {
    my (@chunks) = @_;
    return join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @chunks)
        . "0\r\n\r\n";
}

###############################################################################
# Content-Type: 415

refused('ban with Content-Type text/plain -> 415 code 4',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    headers => ['Content-Type' => 'text/plain'],
    expect => [415, 4, 'Content-Type must be application/json']);

refused('ban with a body and no Content-Type -> 415 code 4',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    expect => [415, 4, 'Content-Type must be application/json']);

refused('ban with Content-Type application/jsonx -> 415 code 4',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    headers => ['Content-Type' => 'application/jsonx'],
    expect => [415, 4, 'Content-Type must be application/json']);

refused('ban with Content-Type application/json-patch+json -> 415 code 4',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
    headers => ['Content-Type' => 'application/json-patch+json'],
    expect => [415, 4, 'Content-Type must be application/json']);

refused('chunked ban with Content-Type text/plain -> 415 code 4',
    POST => '/moderation/ban', body => chunked('{"target_user_id":"u-2"}'),
    headers => ['Content-Type' => 'text/plain',
                'Transfer-Encoding' => 'chunked'],
    expect => [415, 4, 'Content-Type must be application/json']);

for my $ct ('application/json; charset=utf-8', 'Application/JSON',
            "application/json;charset=UTF-8")
{
    my ($r, $u) = forwarded("ban with Content-Type \"$ct\" -> forwarded",
        POST => '/moderation/ban', body => '{"target_user_id":"u-2"}',
        headers => ['Content-Type' => $ct],
        upath => '/api/v2/moderation/ban',
        ubody => '{"banned_by_id":"mod-1","target_user_id":"u-2"}');
    is_deeply($u && $u->{headers}{'content-type'}, ['application/json'],
        "ban with Content-Type \"$ct\": upstream Content-Type is application/json");
}

# an empty body counts as {} and needs no Content-Type

forwarded('reactivate_user with no body -> upstream {"created_by_id":CALLER}',
    POST => '/moderation/users/u-2/reactivate',
    upath => '/api/v2/users/u-2/reactivate',
    ubody => '{"created_by_id":"mod-1"}');

forwarded('reactivate_user with an empty body and Content-Type text/plain -> '
    . 'forwarded as {"created_by_id":CALLER}',
    POST => '/moderation/users/u-2/reactivate', body => '',
    headers => ['Content-Type' => 'text/plain'],
    upath => '/api/v2/users/u-2/reactivate',
    ubody => '{"created_by_id":"mod-1"}');

forwarded('reactivate_user with {} -> {"created_by_id":CALLER}',
    POST => '/moderation/users/u-2/reactivate', body => '{}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/users/u-2/reactivate',
    ubody => '{"created_by_id":"mod-1"}');

forwarded('reactivate_user with "{ }" -> {"created_by_id":CALLER } (no comma)',
    POST => '/moderation/users/u-2/reactivate', body => '{ }',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/users/u-2/reactivate',
    ubody => '{"created_by_id":"mod-1" }');

refused('ban with no body -> 400 code 4 target_user_id required',
    POST => '/moderation/ban',
    expect => [400, 4, 'target_user_id is a required field']);

###############################################################################
# size: 413 (stream_mod_max_body_size 1k on /moderation/unmute)

{
    # exactly 1024 bytes passes, 1025 bytes does not
    my $head = '{"target_ids":["u-2"],"x":"';
    my $tail = '"}';
    my $body = $head . ('a' x (1024 - length($head) - length($tail))) . $tail;
    is(length $body, 1024, 'a 1024-byte unmute body');

    forwarded('unmute with a 1024-byte body at a 1k limit -> forwarded',
        POST => '/moderation/unmute', body => $body,
        headers => ['Content-Type' => $JSON],
        upath => '/api/v2/moderation/unmute',
        ubody => '{"user_id":"mod-1",' . substr($body, 1));

    $body = $head . ('a' x (1025 - length($head) - length($tail))) . $tail;

    refused('unmute with Content-Length 1025 at a 1k limit -> 413 code 22',
        POST => '/moderation/unmute', body => $body,
        headers => ['Content-Type' => $JSON],
        expect => [413, 22, 'request body is larger than 1024 bytes']);

    refused('unmute with Content-Length 100000 at a 1k limit -> 413 code 22',
        POST => '/moderation/unmute', body => '{' . (' ' x 99998) . '}',
        headers => ['Content-Type' => $JSON],
        expect => [413, 22, 'request body is larger than 1024 bytes']);

    # chunked: no Content-Length, the body grows past the limit

    my @chunks = ('{"target_ids":["u-2"],"x":"', ('b' x 500), ('b' x 500),
        '"}');
    refused('unmute chunked, 1029 bytes in 4 chunks, at a 1k limit -> 413 code 22',
        POST => '/moderation/unmute', body => chunked(@chunks),
        headers => ['Content-Type' => $JSON,
                    'Transfer-Encoding' => 'chunked'],
        expect => [413, 22, 'request body is larger than 1024 bytes']);

    refused('unmute chunked, one 5000-byte chunk, at a 1k limit -> 413 code 22',
        POST => '/moderation/unmute',
        body => chunked('{"target_ids":[],"x":"' . ('c' x 4976) . '"}'),
        headers => ['Content-Type' => $JSON,
                    'Transfer-Encoding' => 'chunked'],
        expect => [413, 22, 'request body is larger than 1024 bytes']);

    # chunked under the limit: Stream gets a Content-Length, not chunks

    my ($r, $u) = forwarded('unmute chunked, 3 chunks under the limit -> '
        . 'forwarded with a Content-Length',
        POST => '/moderation/unmute',
        body => chunked('{"target_ids"', ':["u-2",', '"u-3"]}'),
        headers => ['Content-Type' => $JSON,
                    'Transfer-Encoding' => 'chunked'],
        upath => '/api/v2/moderation/unmute',
        ubody => '{"user_id":"mod-1","target_ids":["u-2","u-3"]}');
    ok($u && !$u->{chunked}, 'unmute chunked: not chunked upstream');
}

# the default limit is 64k

{
    my $body = '{"user_ids":["u-2"],"x":"' . ('r' x 65536) . '"}';

    refused('deactivate_users with a ' . length($body) . '-byte body at the '
        . 'default 64k limit -> 413 code 22',
        POST => '/moderation/users/deactivate', body => $body,
        headers => ['Content-Type' => $JSON],
        expect => [413, 22, 'request body is larger than 65536 bytes']);
}

###############################################################################
# a body larger than client_body_buffer_size (1k on /moderation/ban):
# NGINX writes it to a temporary file; the gate still sees all of it

{
    my $reason = join '', map { sprintf "%05d.", $_ } 1 .. 5000;   # 30000 bytes
    my $body = '{"target_user_id":"u-2","timeout":5,"reason":"' . $reason
        . '","shadow":true}';
    ok(length $body > 30000, 'a 30 KB ban body');

    my $off = length $t->error_log;

    forwarded('ban with a 30 KB body spooled to a temporary file -> '
        . 'forwarded byte for byte, actor stamped',
        POST => '/moderation/ban', body => $body,
        headers => ['Content-Type' => $JSON],
        upath => '/api/v2/moderation/ban',
        ubody => '{"banned_by_id":"mod-1",' . substr($body, 1));

    like(substr($t->error_log, $off),
        qr/a client request body is buffered to a temporary file/,
        'the 30 KB body was spooled to a temporary file');

    # a bad field at the very end of a spooled body

    bad_body('ban, 30 KB body with timeout "10" at the end -> 400 code 4',
        '/moderation/ban',
        '{"target_user_id":"u-2","reason":"' . $reason . '","timeout":"10"}',
        400, 4, 'timeout has the wrong type');

    # jansson reports the column where the repeated key ends
    my $prefix = '{"target_user_id":"u-2","reason":"' . $reason . '",';
    bad_body('ban, 30 KB body with target_user_id repeated at the end -> '
        . '400 code 4 duplicate key',
        '/moderation/ban', $prefix . '"target_user_id":"alice"}',
        400, 4, 'duplicate key in JSON body at line 1, column '
            . (length($prefix) + length('"target_user_id"')));

    bad_body('ban, 30 KB body with banned_by_id of someone else at the end '
        . '-> 403 code 17',
        '/moderation/ban',
        '{"target_user_id":"u-2","reason":"' . $reason
        . '","banned_by_id":"mod-2"}',
        403, 17, 'acting user mismatch: banned_by_id must be the caller');

    bad_body('ban, 30 KB body cut short -> 400 code 4 invalid JSON',
        '/moderation/ban',
        '{"target_user_id":"u-2","reason":"' . $reason . '"',
        400, 4, qr/\Ainvalid JSON body at line 1, column \d{5}\z/);
}

###############################################################################
# Expect: 100-continue

{
    my $body = '{"target_user_id":"u-2","timeout":10}';
    my $head = "POST /moderation/ban HTTP/1.1\r\n"
        . "Host: localhost\r\n"
        . "Authorization: Bearer $TOKEN\r\n"
        . "Content-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\n"
        . "Expect: 100-continue\r\n"
        . "Connection: close\r\n\r\n";

    $t->reset_upstream;
    my ($continue, $r) = expect_exchange($head, $body);
    ok($continue, 'ban with Expect: 100-continue: NGINX answers 100 Continue');
    is($r->{status}, 201, 'ban with Expect: 100-continue: then 201')
        or diag($r->{body} // $r->{raw});
    my $u = $t->last_upstream;
    is($u && $u->{body}, '{"banned_by_id":"mod-1","target_user_id":"u-2","timeout":10}',
        'ban with Expect: 100-continue: body stamped upstream');
    ok($u && !$u->{headers}{expect},
        'ban with Expect: 100-continue: no Expect header upstream');

    # refused before the body is read: no 100 Continue at all

    $head =~ s{application/json}{text/plain};
    $t->reset_upstream;
    ($continue, $r) = expect_exchange($head, $body);
    ok(!$continue, 'ban with Expect: 100-continue and text/plain: no 100 Continue');
    api_error_ok($r, 'ban with Expect: 100-continue and text/plain -> 415',
        415, 4, 'Content-Type must be application/json');
    is($t->upstream_count, 0,
        'ban with Expect: 100-continue and text/plain: nothing reached Stream');
}

###############################################################################
# malformed JSON: 400 code 4

bad_body('ban with a truncated object -> 400 code 4 invalid JSON',
    '/moderation/ban', '{"target_user_id":',
    400, 4, 'invalid JSON body at line 1, column 18');

bad_body('ban with a syntax error on line 3 -> 400 code 4, line 3',
    '/moderation/ban', "{\n  \"target_user_id\": \"u\",\n  x\n}",
    400, 4, 'invalid JSON body at line 3, column 3');

bad_body('ban with trailing garbage after the object -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u"} x',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a second object after the first -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u"}{"target_user_id":"alice"}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a trailing comma -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u",}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with single-quoted strings -> 400 code 4',
    '/moderation/ban', "{'target_user_id':'u'}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

# non-object JSON (docs/errors.md: "body must be a JSON object")

for my $c (['an array', '[{"target_user_id":"u"}]'], ['a string', '"u"'],
           ['a number', '1'], ['null', 'null'], ['true', 'true'])
{
    bad_body("ban with $c->[0] as the body ($c->[1]) -> 400 code 4",
        '/moderation/ban', $c->[1], 400, 4, 'body must be a JSON object');
}

# duplicate keys

bad_body('ban with target_user_id twice -> 400 code 4 duplicate key',
    '/moderation/ban', '{"target_user_id":"a","target_user_id":"alice"}',
    400, 4, 'duplicate key in JSON body at line 1, column 38');

bad_body('ban with a duplicate key in a nested object -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"a","x":{"k":1,"k":2}}',
    400, 4, qr/\Aduplicate key in JSON body at line 1, column \d+\z/);

bad_body('ban with a duplicate key in an object inside an array -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"a","x":[{"k":1},{"k":1,"k":1}]}',
    400, 4, qr/\Aduplicate key in JSON body at line 1, column \d+\z/);

bad_body('ban with banned_by_id twice, the caller then another -> 400 code 4',
    '/moderation/ban',
    '{"target_user_id":"a","banned_by_id":"mod-1","banned_by_id":"mod-2"}',
    400, 4, qr/\Aduplicate key in JSON body at line 1, column \d+\z/);

# invalid UTF-8, NUL

bad_body('ban with a 0xff byte inside a string -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"reason\":\"\xff\"}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with an overlong UTF-8 sequence (0xc0 0xaf) -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"reason\":\"\xc0\xaf\"}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a UTF-16 surrogate encoded in UTF-8 -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"reason\":\"\xed\xa0\x80\"}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with invalid UTF-8 in a key -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"r\xfe\":1}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a \u0000 escape -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u","reason":"a\u0000b"}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a \u0000 escape in target_user_id -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"alice\u0000x"}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with a raw NUL byte inside a string -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"reason\":\"a\0b\"}",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

# jansson 2.14 skipped a NUL byte right after a number and let it through
# to Stream; the module's reader refuses it where it is
bad_body('ban with a raw NUL byte right after a number -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\",\"timeout\":5\0}",
    400, 4, 'invalid JSON body at line 1, column 34');

bad_body('ban with a raw NUL byte after the object -> 400 code 4',
    '/moderation/ban', "{\"target_user_id\":\"u\"}\0",
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

# numbers out of range, deep nesting

bad_body('ban with timeout 1e400 -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u","timeout":1e400}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with timeout 99999999999999999999 -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u","timeout":99999999999999999999}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with an unknown field 1e400 -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u","n":-1e400}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with 3000 nested arrays -> 400 code 4',
    '/moderation/ban',
    '{"target_user_id":"u","x":' . ('[' x 3000) . (']' x 3000) . '}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

bad_body('ban with 3000 nested objects -> 400 code 4',
    '/moderation/ban',
    '{"target_user_id":"u","x":' . ('{"a":' x 3000) . '1' . ('}' x 3000) . '}',
    400, 4, qr/\Ainvalid JSON body at line 1, column \d+\z/);

###############################################################################
# the schema: types

for my $c (
    ['target_user_id 5',        '{"target_user_id":5}',               'target_user_id has the wrong type'],
    ['target_user_id null',     '{"target_user_id":null}',            'target_user_id has the wrong type'],
    ['target_user_id ["u"]',    '{"target_user_id":["u"]}',           'target_user_id has the wrong type'],
    ['timeout "10"',            '{"target_user_id":"u","timeout":"10"}', 'timeout has the wrong type'],
    ['timeout 10.5',            '{"target_user_id":"u","timeout":10.5}', 'timeout has the wrong type'],
    ['timeout 10.0',            '{"target_user_id":"u","timeout":10.0}', 'timeout has the wrong type'],
    ['timeout 1e2',             '{"target_user_id":"u","timeout":1e2}', 'timeout has the wrong type'],
    ['timeout -1',              '{"target_user_id":"u","timeout":-1}', 'timeout has the wrong type'],
    ['timeout true',            '{"target_user_id":"u","timeout":true}', 'timeout has the wrong type'],
    ['ip_ban "true"',           '{"target_user_id":"u","ip_ban":"true"}', 'ip_ban has the wrong type'],
    ['ip_ban 1',                '{"target_user_id":"u","ip_ban":1}',  'ip_ban has the wrong type'],
    ['shadow null',             '{"target_user_id":"u","shadow":null}', 'shadow has the wrong type'],
    ['reason 5',                '{"target_user_id":"u","reason":5}',  'reason has the wrong type'],
    ['channel_cid {}',          '{"target_user_id":"u","channel_cid":{}}', 'channel_cid has the wrong type'],
    ['delete_messages "x"',     '{"target_user_id":"u","delete_messages":"x"}', 'delete_messages has a value outside its enum'],
    ['delete_messages "HARD"',  '{"target_user_id":"u","delete_messages":"HARD"}', 'delete_messages has a value outside its enum'],
    ['delete_messages true',    '{"target_user_id":"u","delete_messages":true}', 'delete_messages has the wrong type'],
    ['target_user_id ""',       '{"target_user_id":""}',              'target_user_id is not a valid user id'],
    ['target_user_id "a b"',    '{"target_user_id":"a b"}',           'target_user_id is not a valid user id'],
    ['target_user_id "a/b"',    '{"target_user_id":"a/b"}',           'target_user_id is not a valid user id'],
    ['target_user_id of 256 bytes', '{"target_user_id":"' . ('u' x 256) . '"}', 'target_user_id is not a valid user id'],
    ['banned_by_id 5',          '{"target_user_id":"u","banned_by_id":5}', 'banned_by_id has the wrong type'],
    ['banned_by_id ""',         '{"target_user_id":"u","banned_by_id":""}', 'banned_by_id is not a valid user id'],
    )
{
    bad_body("ban with $c->[0] -> 400 code 4", '/moderation/ban', $c->[1],
        400, 4, $c->[2]);
}

forwarded('ban with timeout 0, delete_messages "hard", ip_ban false, '
    . 'a 255-byte target -> forwarded',
    POST => '/moderation/ban',
    body => '{"target_user_id":"' . ('u' x 255)
        . '","timeout":0,"delete_messages":"hard","ip_ban":false}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => '{"banned_by_id":"mod-1","target_user_id":"' . ('u' x 255)
        . '","timeout":0,"delete_messages":"hard","ip_ban":false}');

# the schema: required fields

for my $c (
    ['ban',                     '/moderation/ban',               'target_user_id'],
    ['mute',                    '/moderation/mute',              'target_ids'],
    ['unmute',                  '/moderation/unmute',            'target_ids'],
    ['block_user',              '/moderation/block',             'blocked_user_id'],
    ['unblock_user',            '/moderation/unblock',           'blocked_user_id'],
    ['deactivate_users',        '/moderation/users/deactivate',  'user_ids'],
    ['reactivate_users',        '/moderation/users/reactivate',  'user_ids'],
    ['export_users',            '/moderation/users/export',      'user_ids'],
    ['block_call_user',         '/calls/default/c-1/block',      'user_id'],
    ['unblock_call_user',       '/calls/default/c-1/unblock',    'user_id'],
    ['kick_user',               '/calls/default/c-1/kick',       'user_id'],
    ['update_user_permissions', '/calls/default/c-1/user_permissions', 'user_id'],
    ['request_permission',      '/calls/default/c-1/request_permission', 'permissions'],
    )
{
    bad_body("$c->[0] with {} -> 400 code 4 $c->[2] required", $c->[1], '{}',
        400, 4, "$c->[2] is a required field");
}

bad_body('unban (POST /moderation/unban) with the target in neither query '
    . 'nor body -> 400 code 4',
    '/moderation/unban', '{"unbanned_by_id":"mod-1"}',
    400, 4, 'target_user_id is a required field');

refused('unban (DELETE /moderation/ban) with {} -> 400 code 4 target_user_id '
    . 'required',
    DELETE => '/moderation/ban', body => '{}',
    headers => ['Content-Type' => $JSON],
    expect => [400, 4, 'target_user_id is a required field']);

refused('unban with target_user_id in query and body, different -> 400 code 4',
    DELETE => '/moderation/ban?target_user_id=u-2',
    body => '{"target_user_id":"u-3"}',
    headers => ['Content-Type' => $JSON],
    expect => [400, 4, 'target_user_id differs between query and body']);

# the schema: arrays

my @ids = map { "u-$_" } 1 .. 1001;
my $ids = sub { '[' . join(',', map { "\"$_\"" } @ids[0 .. $_[0] - 1]) . ']' };

bad_body('export_users with 26 user_ids -> 400 code 4',
    '/moderation/users/export', '{"user_ids":' . $ids->(26) . '}',
    400, 4, 'user_ids must have between 1 and 25 items');

bad_body('export_users with 0 user_ids -> 400 code 4',
    '/moderation/users/export', '{"user_ids":[]}',
    400, 4, 'user_ids must have between 1 and 25 items');

forwarded('export_users with 25 user_ids -> forwarded',
    POST => '/moderation/users/export', body => '{"user_ids":' . $ids->(25) . '}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/export/users',
    ubody => '{"user_ids":' . $ids->(25) . '}');

bad_body('deactivate_users with 101 user_ids -> 400 code 4',
    '/moderation/users/deactivate', '{"user_ids":' . $ids->(101) . '}',
    400, 4, 'user_ids must have between 1 and 100 items');

bad_body('reactivate_users with 0 user_ids -> 400 code 4',
    '/moderation/users/reactivate', '{"user_ids":[]}',
    400, 4, 'user_ids must have between 1 and 100 items');

forwarded('deactivate_users with 100 user_ids -> forwarded',
    POST => '/moderation/users/deactivate',
    body => '{"user_ids":' . $ids->(100) . '}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/users/deactivate',
    ubody => '{"created_by_id":"mod-1","user_ids":' . $ids->(100) . '}');

bad_body('mute with 1001 target_ids -> 400 code 4',
    '/moderation/mute', '{"target_ids":' . $ids->(1001) . '}',
    400, 4, 'target_ids must have between 0 and 1000 items');

forwarded('mute with 1000 target_ids -> forwarded',
    POST => '/moderation/mute', body => '{"target_ids":' . $ids->(1000) . '}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/mute',
    ubody => '{"user_id":"mod-1","target_ids":' . $ids->(1000) . '}');

for my $c (
    ['mute', '/moderation/mute', '{"target_ids":"u-2"}', 'target_ids has the wrong type'],
    ['mute', '/moderation/mute', '{"target_ids":{"0":"u-2"}}', 'target_ids has the wrong type'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2",3]}', 'target_ids has the wrong type'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2",null]}', 'target_ids has the wrong type'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2",["alice"]]}', 'target_ids has the wrong type'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2","a b"]}', 'target_ids is not a valid user id'],
    ['mute', '/moderation/mute', '{"target_ids":[""]}', 'target_ids is not a valid user id'],
    ['deactivate_users', '/moderation/users/deactivate', '{"user_ids":[1]}', 'user_ids has the wrong type'],
    ['deactivate_users', '/moderation/users/deactivate', '{"user_ids":["u-1","x\u00e9"]}', 'user_ids is not a valid user id'],
    ['export_users', '/moderation/users/export', '{"user_ids":["../etc"]}', 'user_ids is not a valid user id'],
    ['mute_users', '/calls/default/c-1/mute_users', '{"user_ids":[true]}', 'user_ids has the wrong type'],
    ['mute_users', '/calls/default/c-1/mute_users', '{"user_ids":["u 2"]}', 'user_ids is not a valid user id'],
    ['mute_users', '/calls/default/c-1/mute_users', '{"mute_all_users":"yes"}', 'mute_all_users has the wrong type'],
    ['block_user', '/moderation/block', '{"blocked_user_id":"u:2"}', 'blocked_user_id is not a valid user id'],
    ['kick_user', '/calls/default/c-1/kick', '{"user_id":"u-2","block":"true"}', 'block has the wrong type'],
    ['block_call_user', '/calls/default/c-1/block', '{"user_id":7}', 'user_id has the wrong type'],
    ['update_user_permissions', '/calls/default/c-1/user_permissions',
     '{"user_id":"u-2","grant_permissions":["fly"]}', 'grant_permissions has a value outside its enum'],
    ['update_user_permissions', '/calls/default/c-1/user_permissions',
     '{"user_id":"u-2","revoke_permissions":["send-audio","Send-Video"]}', 'revoke_permissions has a value outside its enum'],
    ['update_user_permissions', '/calls/default/c-1/user_permissions',
     '{"user_id":"u-2","grant_permissions":"screenshare"}', 'grant_permissions has the wrong type'],
    ['request_permission', '/calls/default/c-1/request_permission',
     '{"permissions":["send-audio","admin"]}', 'permissions has a value outside its enum'],
    ['deactivate_user', '/moderation/users/u-2/deactivate',
     '{"mark_messages_deleted":"yes"}', 'mark_messages_deleted has the wrong type'],
    )
{
    bad_body("$c->[0] with $c->[2] -> 400 code 4", $c->[1], $c->[2],
        400, 4, $c->[3]);
}

###############################################################################
# field names: Stream's decoder ignores case (ASCII, U+017F, U+212A)

for my $c (
    ['ban with key Target_User_Id', '/moderation/ban', '{"Target_User_Id":"u-2"}', 'target_user_id'],
    ['ban with key TARGET_USER_ID', '/moderation/ban', '{"TARGET_USER_ID":"u-2"}', 'target_user_id'],
    ['ban with key Timeout (and a valid target)', '/moderation/ban',
     '{"target_user_id":"u-2","Timeout":"forever"}', 'timeout'],
    ['ban with key Banned_By_Id (the actor)', '/moderation/ban',
     '{"target_user_id":"u-2","Banned_By_Id":"mod-2"}', 'banned_by_id'],
    ['ban with key Banned_By (the user object)', '/moderation/ban',
     '{"target_user_id":"u-2","Banned_By":{"id":"mod-2"}}', 'banned_by'],
    ['kick_user with key kicked_by_id spelled with a Kelvin sign (U+212A)', '/calls/default/c-1/kick',
     "{\"user_id\":\"u-2\",\"\xe2\x84\xaaicked_by_id\":\"mod-2\"}", 'kicked_by_id'],
    ['deactivate_users with key user_ids spelled with a long s (U+017F)', '/moderation/users/deactivate',
     "{\"u\xc5\xbfer_ids\":[\"alice\"],\"user_ids\":[\"u-2\"]}", 'user_ids'],
    ['mute with key target_ids spelled with a long s (U+017F)', '/moderation/mute',
     "{\"target_ids\":[\"u-2\"],\"target_id\xc5\xbf\":[\"alice\"]}", 'target_ids'],
    )
{
    bad_body("$c->[0] -> 400 code 4, spell it $c->[3]", $c->[1], $c->[2],
        400, 4, "field name must be spelled exactly \"$c->[3]\"");
}

bad_body('ban with target_user_id and Target_user_id, same value -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"a","Target_user_id":"a"}',
    400, 4, 'field name must be spelled exactly "target_user_id"');

bad_body('ban with two unknown keys foo and FOO -> 400 code 4',
    '/moderation/ban', '{"target_user_id":"u-2","foo":1,"FOO":2}',
    400, 4, 'two fields differ only in case');

bad_body('ban with two unknown keys "sk" and "\x{17f}\x{212a}" -> 400 code 4',
    '/moderation/ban',
    "{\"target_user_id\":\"u-2\",\"sk\":1,\"\xc5\xbf\xe2\x84\xaa\":2}",
    400, 4, 'two fields differ only in case');

forwarded('ban with unknown keys "sk" and "st" (different) -> forwarded',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","sk":1,"st":2}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => '{"banned_by_id":"mod-1","target_user_id":"u-2","sk":1,"st":2}');

###############################################################################
# the body reaches Stream as sent: unknown fields, numbers, escapes, order

{
    my ($r, $u) = forwarded('ban with unknown fields -> forwarded byte for byte',
        POST => '/moderation/ban',
        body => '{"target_user_id":"u","extra":{"a":[1,2]},"n":1.50}',
        headers => ['Content-Type' => $JSON],
        upath => '/api/v2/moderation/ban',
        ubody => '{"banned_by_id":"mod-1","target_user_id":"u",'
            . '"extra":{"a":[1,2]},"n":1.50}');
    is_deeply($u && $u->{unknown_fields}, ['extra', 'n'],
        'ban with unknown fields: Stream sees them as unknown');
}

forwarded('ban with escapes, spacing and key order -> forwarded unchanged',
    POST => '/moderation/ban',
    body => qq'{ "reason" : "caf\\u00e9 \\"x\\"\\n\\/\xe2\x82\xac",\n'
        . qq' "n": -0.0e-0, "big": 123456789012345678, "target_user_id":"u-2" }',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => qq'{"banned_by_id":"mod-1", "reason" : "caf\\u00e9 \\"x\\"\\n\\/\xe2\x82\xac",\n'
        . qq' "n": -0.0e-0, "big": 123456789012345678, "target_user_id":"u-2" }');

forwarded('ban with whitespace before the brace -> kept, actor after the brace',
    POST => '/moderation/ban', body => qq'  \n {"target_user_id":"u-2"}\n',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => qq'  \n {"banned_by_id":"mod-1","target_user_id":"u-2"}\n');

###############################################################################
# the actor field

forwarded('ban without banned_by_id -> stamped as the first key',
    POST => '/moderation/ban', body => '{"target_user_id":"u-2","timeout":3}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => '{"banned_by_id":"mod-1","target_user_id":"u-2","timeout":3}');

forwarded('ban with banned_by_id equal to the caller, last -> body unchanged',
    POST => '/moderation/ban',
    body => '{"target_user_id":"u-2",  "banned_by_id":"mod-1"}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/moderation/ban',
    ubody => '{"target_user_id":"u-2",  "banned_by_id":"mod-1"}');

forwarded('mute_users with muted_by_id equal to the caller -> body unchanged',
    POST => '/calls/default/c-1/mute_users',
    body => '{"muted_by_id":"mod-1","user_ids":["u-2"],"audio":true}',
    headers => ['Content-Type' => $JSON],
    upath => '/api/v2/video/call/default/c-1/mute_users',
    ubody => '{"muted_by_id":"mod-1","user_ids":["u-2"],"audio":true}');

for my $c (
    ['ban', '/moderation/ban', '{"target_user_id":"u-2","banned_by_id":"mod-2"}', 'banned_by_id'],
    ['ban (caller id in another case)', '/moderation/ban',
     '{"target_user_id":"u-2","banned_by_id":"MOD-1"}', 'banned_by_id'],
    ['unban', '/moderation/unban?target_user_id=u-2', '{"unbanned_by_id":"mod-2"}', 'unbanned_by_id'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2"],"user_id":"mod-2"}', 'user_id'],
    ['unmute', '/moderation/unmute', '{"target_ids":["u-2"],"user_id":"mod-2"}', 'user_id'],
    ['block_user', '/moderation/block', '{"blocked_user_id":"u-2","user_id":"mod-2"}', 'user_id'],
    ['unblock_user', '/moderation/unblock', '{"blocked_user_id":"u-2","user_id":"mod-2"}', 'user_id'],
    ['deactivate_user', '/moderation/users/u-2/deactivate', '{"created_by_id":"mod-2"}', 'created_by_id'],
    ['reactivate_user', '/moderation/users/u-2/reactivate', '{"created_by_id":"mod-2"}', 'created_by_id'],
    ['deactivate_users', '/moderation/users/deactivate', '{"user_ids":["u-2"],"created_by_id":"mod-2"}', 'created_by_id'],
    ['reactivate_users', '/moderation/users/reactivate', '{"user_ids":["u-2"],"created_by_id":"mod-2"}', 'created_by_id'],
    ['mute_users', '/calls/default/c-1/mute_users', '{"user_ids":["u-2"],"muted_by_id":"mod-2"}', 'muted_by_id'],
    ['kick_user', '/calls/default/c-1/kick', '{"user_id":"u-2","kicked_by_id":"mod-2"}', 'kicked_by_id'],
    )
{
    bad_body("$c->[0] with $c->[3] of someone else -> 403 code 17",
        $c->[1], $c->[2], 403, 17,
        "acting user mismatch: $c->[3] must be the caller");
}

bad_body('mute_users with muted_by_id 5 -> 400 code 4 wrong type',
    '/calls/default/c-1/mute_users', '{"user_ids":["u-2"],"muted_by_id":5}',
    400, 4, 'muted_by_id has the wrong type');

bad_body('kick_user with kicked_by_id null -> 400 code 4 wrong type',
    '/calls/default/c-1/kick', '{"user_id":"u-2","kicked_by_id":null}',
    400, 4, 'kicked_by_id has the wrong type');

# the user-object forms are always refused, even naming the caller

for my $c (
    ['ban', '/moderation/ban', '{"target_user_id":"u-2","banned_by":{"id":"mod-1"}}', 'banned_by'],
    ['ban (null)', '/moderation/ban', '{"target_user_id":"u-2","banned_by":null}', 'banned_by'],
    ['unban', '/moderation/unban?target_user_id=u-2', '{"unbanned_by":{"id":"mod-1"}}', 'unbanned_by'],
    ['mute', '/moderation/mute', '{"target_ids":["u-2"],"user":{"id":"mod-1"}}', 'user'],
    ['unmute', '/moderation/unmute', '{"target_ids":["u-2"],"user":{"id":"mod-1"}}', 'user'],
    ['block_user', '/moderation/block', '{"blocked_user_id":"u-2","user":{"id":"mod-1"}}', 'user'],
    ['unblock_user', '/moderation/unblock', '{"blocked_user_id":"u-2","user":{"id":"mod-1"}}', 'user'],
    ['mute_users', '/calls/default/c-1/mute_users', '{"user_ids":["u-2"],"muted_by":{"id":"mod-1"}}', 'muted_by'],
    ['kick_user', '/calls/default/c-1/kick', '{"user_id":"u-2","kicked_by":{"id":"mod-1"}}', 'kicked_by'],
    ['deactivate_user', '/moderation/users/u-2/deactivate', '{"created_by":{"id":"mod-1"}}', 'created_by'],
    ['reactivate_user', '/moderation/users/u-2/reactivate', '{"created_by":{"id":"mod-1"}}', 'created_by'],
    ['deactivate_users', '/moderation/users/deactivate', '{"user_ids":["u-2"],"created_by":{"id":"mod-1"}}', 'created_by'],
    ['reactivate_users', '/moderation/users/reactivate', '{"user_ids":["u-2"],"created_by":{"id":"mod-1"}}', 'created_by'],
    )
{
    bad_body("$c->[0] with the user object $c->[3] -> 403 code 17", $c->[1], $c->[2],
        403, 17, "$c->[3] is not accepted: send the user id field instead");
}

$t->stop;

done_testing;
