#!/usr/bin/perl
# Writes the seed corpora t/fuzz/corpus/<target>/ (committed; rerun after
# changing this file: perl t/fuzz/make-seeds.pl).  The secrets are those of
# t/fuzz/fuzz_common.h.
use strict;
use warnings;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);

my $API_SECRET   = 'fuzz-api-secret-0123456789abcdef';
my $TOKEN_SECRET = 'fuzz-token-secret-rotated-key-2';

my $dir = dirname(__FILE__) . '/corpus';

sub b64url {
    my $s = encode_base64($_[0], '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+\z//;
    return $s;
}

sub jwt {
    my ($header, $payload, $secret) = @_;
    my $si = b64url($header) . '.' . b64url($payload);
    return "$si." . b64url(hmac_sha256($si, $secret // $API_SECRET));
}

my %written;

sub seed {
    my ($target, $name, $bytes) = @_;
    die "duplicate seed $target/$name" if $written{"$target/$name"}++;
    make_path("$dir/$target");
    open my $fh, '>:raw', "$dir/$target/$name" or die "$target/$name: $!";
    print $fh $bytes;
    close $fh or die;
}

remove_tree($dir);

# ---------------------------------------------------------------- token

my $H    = '{"alg":"HS256","typ":"JWT"}';
my $P    = '{"user_id":"mod-1","iat":1700000000,"exp":4102444800}';
my $good = jwt($H, $P);

my @token = (
    [ 'valid', $good ],
    [ 'valid-bearer', "Bearer $good" ],
    [ 'valid-bearer-lower', "bearer $good" ],
    [ 'valid-role-string', jwt($H, '{"user_id":"bob","role":"moderator"}') ],
    [ 'valid-role-array', jwt($H, '{"user_id":"bob","role":["moderator","host"],"call_cids":["default:c1"]}') ],
    [ 'valid-no-times', jwt('{"alg":"HS256"}', '{"user_id":"a@b_c-d"}') ],
    [ 'valid-float-times', jwt($H, '{"user_id":"u","exp":4102444800.5,"nbf":1.5,"iat":0}') ],
    [ 'alg-none-empty-sig', b64url('{"alg":"none"}') . '.' . b64url($P) . '.' ],
    [ 'alg-none-with-sig', jwt('{"alg":"none"}', $P) ],
    [ 'alg-hs512', jwt('{"alg":"HS512"}', $P) ],
    [ 'alg-rs256', jwt('{"alg":"RS256","typ":"JWT"}', $P) ],
    [ 'alg-lowercase', jwt('{"alg":"hs256"}', $P) ],
    [ 'alg-number', jwt('{"alg":256}', $P) ],
    [ 'alg-missing', jwt('{"typ":"JWT"}', $P) ],
    [ 'crit', jwt('{"alg":"HS256","crit":["exp"]}', $P) ],
    [ 'header-array', jwt('["HS256"]', $P) ],
    [ 'header-dup-alg', jwt('{"alg":"none","alg":"HS256"}', $P) ],
    [ 'bad-signature', substr($good, 0, -1) . (substr($good, -1) eq 'A' ? 'B' : 'A') ],
    [ 'signature-short', substr($good, 0, -1) ],
    [ 'signature-long', $good . 'A' ],
    [ 'signature-other-key', jwt($H, $P, 'wrong-secret') ],
    [ 'signature-padded', $good . '=' ],
    [ 'bad-base64-plus', '+' . substr($good, 1) ],
    [ 'bad-base64-slash', b64url($H) . '/.' . b64url($P) . '.' . 'x' x 43 ],
    [ 'bad-base64-length', 'A.' . b64url($P) . '.' . 'x' x 43 ],
    [ 'dots-only', '..' ],
    [ 'two-segments', b64url($H) . '.' . b64url($P) ],
    [ 'four-segments', "$good.x" ],
    [ 'empty-header-seg', '.' . b64url($P) . '.' . 'x' x 43 ],
    [ 'space-inside', substr($good, 0, 10) . ' ' . substr($good, 10) ],
    [ 'bearer-only', 'Bearer ' ],
    [ 'bearer-double-space', "Bearer  $good" ],
    [ 'basic-auth', 'Basic bW9kLTE6cGFzcw==' ],
    [ 'expired', jwt($H, '{"user_id":"mod-1","exp":1000000000}') ],
    [ 'not-yet-valid', jwt($H, '{"user_id":"mod-1","nbf":4102444800}') ],
    [ 'issued-in-future', jwt($H, '{"user_id":"mod-1","iat":4102444800}') ],
    [ 'exp-string', jwt($H, '{"user_id":"mod-1","exp":"4102444800"}') ],
    [ 'exp-huge', jwt($H, '{"user_id":"mod-1","exp":1e300}') ],
    [ 'server-token', jwt($H, '{"server":true}') ],
    [ 'user-id-number', jwt($H, '{"user_id":42}') ],
    [ 'user-id-empty', jwt($H, '{"user_id":""}') ],
    [ 'user-id-bad-chars', jwt($H, '{"user_id":"a/b c"}') ],
    [ 'user-id-unicode', jwt($H, '{"user_id":"\u00e9l\u00e8ve"}') ],
    [ 'user-id-256', jwt($H, '{"user_id":"' . ('u' x 256) . '"}') ],
    [ 'user-id-255', jwt($H, '{"user_id":"' . ('u' x 255) . '"}') ],
    [ 'payload-not-json', jwt($H, 'user_id=mod-1') ],
    [ 'payload-array', jwt($H, '[{"user_id":"mod-1"}]') ],
    [ 'payload-dup-user', jwt($H, '{"user_id":"mod-1","user_id":"admin"}') ],
    [ 'payload-nul-escape', jwt($H, '{"user_id":"mod\u0000-1"}') ],
    [ 'payload-trailing', jwt($H, '{"user_id":"mod-1"} x') ],
    [ 'payload-deep', jwt($H, '{"user_id":"mod-1","x":' . ('[' x 200) . (']' x 200) . '}') ],
    # structured: 0x01 header \0 payload, signed by the target
    [ 'signed-valid', "\x01$H\0$P" ],
    [ 'signed-claims-types', "\x01$H\0" . '{"user_id":"bob","role":["a",1,null],"call_cids":{},"exp":-1e308,"nbf":null,"iat":true}' ],
    [ 'signed-alg-none', "\x01" . '{"alg":"none"}' . "\0$P" ],
    [ 'signed-header-garbage', "\x01\xff\xfe{\0$P" ],
    [ 'signed-payload-garbage', "\x01$H\0" . "{\"user_id\":\"\xc3\x28\"}" ],
    [ 'signed-no-payload', "\x01$H" ],
    [ 'signed-nested', "\x01$H\0" . '{"user_id":"u","a":{"b":{"c":[1,2,{"d":"e"}]}},"exp":4102444800}' ],
    [ 'signed-big-int', "\x01$H\0" . '{"user_id":"u","exp":123456789012345678901234567890}' ],
    [ 'bearer-signed', "\x02$H\0$P" ],
    [ 'rotated-signed', "\x03$H\0$P" ],
    [ 'rotated-expired', "\x03$H\0" . '{"user_id":"u","exp":1}' ],
);
seed('fuzz_token', $_->[0], $_->[1]) for @token;
seed('fuzz_token', 'empty', '');

# ---------------------------------------------------------------- route

my %M = (GET => "\x00", POST => "\x01", DELETE => "\x02", PUT => "\x03");

my @route = (
    [ POST => '/moderation/ban' ],
    [ DELETE => '/moderation/ban' ],
    [ DELETE => '/moderation/ban?target_user_id=u-2' ],
    [ POST => '/moderation/unban?target_user_id=u-2' ],
    [ POST => '/moderation/unban?target_user_id=u-2&channel_cid=messaging:general&created_by=x' ],
    [ POST => '/moderation/unban?api_key=stolen&target_user_id=u-2&foo=bar' ],
    [ POST => '/moderation/unban?target_user_id=u-2&target_user_id=alice' ],
    [ POST => '/moderation/unban?target_user_id=a%2Fb' ],
    [ POST => '/moderation/unban?target_user_id=' ],
    [ POST => '/moderation/unban?target_user_id&&=x&' ],
    [ POST => '/moderation/mute' ],
    [ POST => '/moderation/unmute' ],
    [ POST => '/moderation/block' ],
    [ POST => '/moderation/unblock' ],
    [ GET => '/moderation/blocked' ],
    [ GET => '/moderation/blocked?user_id=mod-1' ],
    [ GET => '/moderation/blocked?user_id=other&user_id=mod-1' ],
    [ POST => '/moderation/users/u-1/deactivate' ],
    [ POST => '/moderation/users/u-1/reactivate' ],
    [ POST => '/moderation/users/deactivate' ],
    [ POST => '/moderation/users/reactivate' ],
    [ POST => '/moderation/users/export' ],
    [ GET => '/moderation/tasks/task-123' ],
    [ POST => '/calls/default/call-1/mute_users' ],
    [ POST => '/calls/default/call-1/block' ],
    [ POST => '/calls/default/call-1/unblock' ],
    [ POST => '/calls/audio_room/c@1/kick' ],
    [ POST => '/calls/default/call-1/user_permissions' ],
    [ POST => '/calls/livestream/call-1/mark_ended' ],
    [ POST => '/calls/default/call-1/request_permission' ],
    # wrong method: 405
    [ GET => '/moderation/ban' ],
    [ PUT => '/moderation/ban' ],
    [ POST => '/moderation/blocked' ],
    [ DELETE => '/moderation/tasks/t-1' ],
    [ GET => '/calls/default/call-1/kick' ],
    # bad parameters and paths: 400
    [ POST => '/moderation/users/' . ('u' x 65) . '/deactivate' ],
    [ POST => '/moderation/users/' . ('u' x 64) . '/deactivate' ],
    [ POST => '/moderation/users/a.b/deactivate' ],
    [ POST => '/moderation/users/a:b/deactivate' ],
    [ POST => '/calls/default/a%2Fb/kick' ],
    [ POST => '/moderation/users/..%2Fban/deactivate' ],
    [ POST => '/moderation/../moderation/ban' ],
    [ POST => '/moderation/./ban' ],
    [ POST => '/moderation//ban' ],
    [ POST => '//moderation/ban' ],
    [ POST => '/moderation/ban/' ],
    [ POST => '/moderation\\ban' ],
    [ POST => '/moderation/ban#frag' ],
    [ POST => '/moderation/%62an' ],
    [ POST => '/moderation/ban/..' ],
    [ POST => '/calls/default/call-1/kick/.' ],
    [ POST => '/a/b/c/d/e/f/g/h/i/j' ],
    [ POST => '/a/b/c/d/e/f/g/h/../j' ],
    [ POST => 'moderation/ban' ],
    [ POST => '?target_user_id=u' ],
    [ POST => '' ],
    [ POST => '/' ],
    [ POST => '/moderation' ],
    [ POST => '/moderation/nothing' ],
    [ POST => '/MODERATION/BAN' ],
    [ POST => '/calls//call-1/kick' ],
);
my $n = 0;
for my $r (@route) {
    my ($m, $path) = @$r;
    (my $name = lc "$m$path") =~ s/[^a-z0-9_.-]+/_/g;
    $name = substr($name, 0, 60) . '-' . $n++;
    seed('fuzz_route', $name, $M{$m} . $path);
}

# ---------------------------------------------------------------- body

my %A;
my @names = qw(ban unban mute unmute block_user unblock_user blocked_users
  deactivate_user reactivate_user deactivate_users reactivate_users
  export_users get_task mute_users block_call_user unblock_call_user
  kick_user update_user_permissions end_call request_permission);
@A{@names} = (0 .. $#names);

my @body = (
    [ ban => '{"target_user_id":"u-2","timeout":30,"reason":"spam"}' ],
    [ ban => '{ "banned_by_id" : "mod-1", "target_user_id":"u-2" }' ],
    [ ban => '{"banned_by_id":"someone-else","target_user_id":"u-2"}' ],
    [ ban => '{"banned_by":{"id":"mod-1"},"target_user_id":"u-2"}' ],
    [ ban => '{"target_user_id":"u-2","ip_ban":true,"shadow":false,"delete_messages":"soft","channel_cid":"messaging:x"}' ],
    [ ban => '{"target_user_id":"u-2","delete_messages":"all"}' ],
    [ ban => '{"target_user_id":"u-2","timeout":-1}' ],
    [ ban => '{"target_user_id":"u-2","timeout":1.5}' ],
    [ ban => '{"target_user_id":"u-2","timeout":"30"}' ],
    [ ban => '{"Target_User_Id":"u-2"}' ],
    [ ban => '{"target_user_id":"u-2","TARGET_USER_ID":"alice"}' ],
    [ ban => "{\"target_user_id\":\"u-2\",\"\xc5\xbfhadow\":true}" ],
    [ ban => "{\"target_user_id\":\"u-2\",\"\xe2\x84\xaaey\":1,\"key\":2}" ],
    [ ban => '{"target_user_id":"u-2","target_user_id":"alice"}' ],
    [ ban => '{"target_user_id":"a b"}' ],
    [ ban => '{"target_user_id":""}' ],
    [ ban => '{"target_user_id":42}' ],
    [ ban => '{"timeout":30}' ],
    [ ban => '' ],
    [ ban => '{}' ],
    [ ban => " \t\n{\"target_user_id\":\"u-2\"} \n" ],
    [ ban => '[{"target_user_id":"u-2"}]' ],
    [ ban => '"text"' ],
    [ ban => '{"target_user_id":"u-2"} {}' ],
    [ ban => "{\"target_user_id\":\"u-2\",\"reason\":\"\xff\xfe\"}" ],
    [ ban => '{"target_user_id":"u-2","reason":"\u0000"}' ],
    [ ban => '{"target_user_id":"u-2","reason":"\ud800"}' ],
    [ ban => '{"target_user_id":"u-2","reason":"caf\u00e9 \"quoted\" \\\\ \/"}' ],
    [ ban => '{"target_user_id":"u-2","extra":{"nested":[1,2,3,{"a":null}]}}' ],
    [ ban => '{"target_user_id":"u-2","timeout":1e2}' ],
    [ ban => '{"target_user_id":"u-2","timeout":99999999999999999999999}' ],
    [ unban => '{"target_user_id":"u-2"}' ],
    [ unban => '{}' ],
    [ unban => '{"unbanned_by_id":"mod-1","target_user_id":"u-2"}' ],
    [ unban => '{"unbanned_by":{"id":"x"}}' ],
    [ 'unban+q' => '{"target_user_id":"u-2"}' ],
    [ 'unban+q' => '{"target_user_id":"alice"}' ],
    [ 'unban+q' => '' ],
    [ mute => '{"target_ids":["u-2","u-3"],"timeout":10}' ],
    [ mute => '{"target_ids":[]}' ],
    [ mute => '{"target_ids":["u-2",3]}' ],
    [ mute => '{"target_ids":"u-2"}' ],
    [ mute => '{"target_ids":["u-2"],"user_id":"mod-1"}' ],
    [ mute => '{"target_ids":["u-2"],"user_id":"other"}' ],
    [ mute => '{"target_ids":["u-2"],"user":{"id":"mod-1"}}' ],
    [ mute => '{"target_ids":[' . join(',', map { "\"u$_\"" } 1 .. 1001) . ']}' ],
    [ unmute => '{"target_ids":["u-2"]}' ],
    [ block_user => '{"blocked_user_id":"u-2"}' ],
    [ block_user => '{"blocked_user_id":"u-2","user_id":"mod-1"}' ],
    [ block_user => '{"Blocked_User_Id":"u-2"}' ],
    [ unblock_user => '{"blocked_user_id":"u-2"}' ],
    [ blocked_users => '' ],
    [ blocked_users => '{"x":1}' ],
    [ deactivate_user => '{"mark_messages_deleted":true}' ],
    [ deactivate_user => '{}' ],
    [ deactivate_user => '{"created_by_id":"mod-1"}' ],
    [ reactivate_user => '{"name":"Bob","restore_messages":false}' ],
    [ deactivate_users => '{"user_ids":["u-2","u-3"],"mark_channels_deleted":true}' ],
    [ deactivate_users => '{"user_ids":[]}' ],
    [ deactivate_users => '{"user_ids":[' . join(',', map { "\"u$_\"" } 1 .. 101) . ']}' ],
    [ reactivate_users => '{"user_ids":["u-2"],"restore_channels":true}' ],
    [ export_users => '{"user_ids":["u-2"]}' ],
    [ export_users => '{"user_ids":[' . join(',', map { "\"u$_\"" } 1 .. 26) . ']}' ],
    [ get_task => '' ],
    [ mute_users => '{"user_ids":["u-2"],"audio":true,"video":false}' ],
    [ mute_users => '{"mute_all_users":true,"screenshare":true,"screenshare_audio":true}' ],
    [ mute_users => '{"muted_by_id":"mod-1","user_ids":["u-2"]}' ],
    [ mute_users => '{"muted_by":{"id":"x"}}' ],
    [ block_call_user => '{"user_id":"u-2"}' ],
    [ unblock_call_user => '{"user_id":"u-2"}' ],
    [ kick_user => '{"user_id":"u-2","block":true}' ],
    [ kick_user => '{"user_id":"u-2","kicked_by_id":"other"}' ],
    [ update_user_permissions => '{"user_id":"u-2","grant_permissions":["send-audio"],"revoke_permissions":["screenshare"]}' ],
    [ update_user_permissions => '{"user_id":"u-2","grant_permissions":["fly"]}' ],
    [ end_call => '' ],
    [ end_call => '{}' ],
    [ request_permission => '{"permissions":["send-video"]}' ],
    [ request_permission => '{"permissions":["send-video","send-audio","screenshare"]}' ],
    [ request_permission => '{}' ],
);
$n = 0;
for my $b (@body) {
    my ($a, $json) = @$b;
    my $q = ($a =~ s/\+q\z//) ? 0x80 : 0;
    die "no action $a" unless defined $A{$a};
    # keep the high bit meaningful: 0x80 + id, which is id mod 20 again
    my $byte = $q ? 0x80 + ((($A{$a} - 0x80 % 20) + 20) % 20) : $A{$a};
    die "byte $byte for $a" unless $byte % 20 == $A{$a};
    seed('fuzz_body', sprintf('%s-%02d', $a . ($q ? '-query' : ''), $n++), chr($byte) . $json);
}

# ---------------------------------------------------------------- policy

my $spec = <<'JSON';
{
  "roles": { "alice": ["admin"], "bob": ["moderator"] },
  "role_claim": "role",
  "protected_users": ["alice"],
  "rules": [
    { "effect": "deny",  "actions": ["ban"], "roles": ["moderator"], "when": { "ip_ban": true } },
    { "effect": "allow", "actions": ["ban", "unban"], "roles": ["moderator"], "limits": { "max_timeout": 60 } },
    { "effect": "allow", "actions": ["mute_users", "kick_user"], "roles": ["moderator"], "call_types": ["default", "audio_room"] },
    { "effect": "allow", "actions": ["*"], "roles": ["admin"] },
    { "effect": "allow", "actions": ["block_user", "unblock_user", "blocked_users", "request_permission"], "users": ["*"] }
  ]
}
JSON

my @policy = (
    [ 'spec-example', $spec ],
    [ 'allow-all-mod-1', '{"rules":[{"effect":"allow","actions":["*"],"users":["mod-1"]}]}' ],
    [ 'everyone-everything', '{"rules":[{"effect":"allow","actions":["*"],"users":["*"]}]}' ],
    [ 'roles-star', '{"rules":[{"effect":"allow","actions":["*"],"roles":["*"]}]}' ],
    [ 'limits-all', '{"rules":[{"effect":"allow","actions":["ban","mute","mute_users"],"users":["*"],"limits":{"max_timeout":10,"allow_ip_ban":false,"allow_mute_all":false,"max_targets":2}}]}' ],
    [ 'limits-true', '{"rules":[{"effect":"allow","actions":["*"],"users":["*"],"limits":{"allow_ip_ban":true,"allow_mute_all":true,"max_targets":0,"max_timeout":0}}]}' ],
    [ 'when-false-null', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"when":{"shadow":false,"channel_cid":null}},{"effect":"deny","actions":["*"],"users":["*"],"when":{"timeout":30}}]}' ],
    [ 'when-types', '{"rules":[{"effect":"allow","actions":["*"],"users":["*"],"when":{"timeout":30.0,"ip_ban":"true","audio":[true]}}]}' ],
    [ 'call-types-star', '{"role_claim":"role","rules":[{"effect":"allow","actions":["*"],"roles":["host","moderator"],"call_types":["*"]}]}' ],
    [ 'protected-many', '{"protected_users":["system-bot","alice","a","dave"],"rules":[{"effect":"allow","actions":["*"],"users":["*"]}]}' ],
    [ 'users-and-roles', '{"roles":{"eve":["x"]},"rules":[{"effect":"allow","actions":["blocked_users"],"users":["nobody"],"roles":["x"]}]}' ],
    [ 'empty-arrays', '{"protected_users":[],"roles":{},"rules":[{"effect":"allow","actions":[],"users":[]}]}' ],
    [ 'no-rules', '{"roles":{"a":["b"]}}' ],
    [ 'empty-object', '{}' ],
    [ 'rules-empty', '{"rules":[]}' ],
    [ 'deny-first', '{"rules":[{"effect":"deny","actions":["*"],"users":["*"]},{"effect":"allow","actions":["*"],"users":["*"]}]}' ],
    [ 'unicode-user', '{"roles":{"\u00e9":["admin"]},"rules":[{"effect":"allow","actions":["*"],"users":["\u00e9"]}]}' ],
    [ 'whitespace', "\n\n   {\n\t\"rules\" :\r\n [ ] }\n" ],
    # broken: nginx -t fails
    [ 'bad-unknown-key', '{"rulez":[]}' ],
    [ 'bad-unknown-rule-key', '{"rules":[{"effect":"allow","actions":["*"],"users":["*"],"priority":1}]}' ],
    [ 'bad-unknown-action', '{"rules":[{"effect":"allow","actions":["bann"],"users":["*"]}]}' ],
    [ 'bad-unknown-limit', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"limits":{"max_bans":1}}]}' ],
    [ 'bad-limits-on-deny', '{"rules":[{"effect":"deny","actions":["ban"],"users":["*"],"limits":{"max_timeout":1}}]}' ],
    [ 'bad-effect', '{"rules":[{"effect":"permit","actions":["ban"],"users":["*"]}]}' ],
    [ 'bad-effect-missing', '{"rules":[{"actions":["ban"],"users":["*"]}]}' ],
    [ 'bad-actions-missing', '{"rules":[{"effect":"allow","users":["*"]}]}' ],
    [ 'bad-no-users-roles', '{"rules":[{"effect":"allow","actions":["*"]}]}' ],
    [ 'bad-actions-string', '{"rules":[{"effect":"allow","actions":"*","users":["*"]}]}' ],
    [ 'bad-users-number', '{"rules":[{"effect":"allow","actions":["*"],"users":[1]}]}' ],
    [ 'bad-users-empty-string', '{"rules":[{"effect":"allow","actions":["*"],"users":[""]}]}' ],
    [ 'bad-max-timeout-negative', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"limits":{"max_timeout":-1}}]}' ],
    [ 'bad-max-timeout-float', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"limits":{"max_timeout":1.5}}]}' ],
    [ 'bad-allow-ip-ban-string', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"limits":{"allow_ip_ban":"no"}}]}' ],
    [ 'bad-when-array', '{"rules":[{"effect":"allow","actions":["ban"],"users":["*"],"when":[]}]}' ],
    [ 'bad-rule-not-object', '{"rules":[["allow"]]}' ],
    [ 'bad-rules-object', '{"rules":{"effect":"allow"}}' ],
    [ 'bad-roles-array', '{"roles":["admin"]}' ],
    [ 'bad-roles-value', '{"roles":{"alice":"admin"}}' ],
    [ 'bad-role-claim-empty', '{"role_claim":""}' ],
    [ 'bad-role-claim-number', '{"role_claim":1}' ],
    [ 'bad-protected-string', '{"protected_users":"alice"}' ],
    [ 'bad-duplicate-key', '{"rules":[],"rules":[]}' ],
    [ 'bad-duplicate-rule-key', '{"rules":[{"effect":"allow","effect":"deny","actions":["*"],"users":["*"]}]}' ],
    [ 'bad-syntax-comma', '{"rules":[{"effect":"allow",}]}' ],
    [ 'bad-syntax-truncated', substr($spec, 0, 200) ],
    [ 'bad-not-object', '[]' ],
    [ 'bad-empty', '' ],
    [ 'bad-comment', "// policy\n{}" ],
    [ 'bad-utf8', "{\"roles\":{\"\xff\":[\"a\"]}}" ],
    [ 'bad-second-rule-line', "{\n \"rules\": [\n  {\"effect\":\"allow\",\"actions\":[\"*\"],\"users\":[\"*\"]},\n  {\"effect\":\"allow\",\"actions\":[\"nope\"],\"users\":[\"*\"]}\n ]\n}\n" ],
    [ 'bad-escaped-key', '{"rules":[{"effect":"allow","actions":["*"],"users":["*"],"w\"hen":{}}]}' ],
);
seed('fuzz_policy', $_->[0], $_->[1]) for @policy;

my $docs = dirname(__FILE__) . '/../../docs/examples/policy.json';
if (open my $fh, '<:raw', $docs) {
    local $/;
    seed('fuzz_policy', 'docs-example', <$fh>);
}

my %count;
$count{ (split m{/}, $_)[0] }++ for keys %written;
print join(', ', map { "$_: $count{$_}" } sort keys %count), "\n";
