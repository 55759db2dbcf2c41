# The reference backend (examples/flask/app.py: Flask, psycopg 3 and its
# pool, Debian's packages) end to end, over real HTTP: an org on the free
# tier is refused a second concurrent conversation, then its monthly time
# (429 with the seed's JSON), a signed Stripe upgrade built from Stripe's
# fixture subscription lets it go on with its usage kept, a replayed and an
# older event change nothing (2xx), a bad signature and a malformed body are
# 400, and another org's usage is 403.  The app connects as roles given the
# app, reader and billing levels, never as the owner.  Then headless
# Chromium opens the usage page of an org at 85 % of its quota through a
# sign-in link: the DOM has the bar and the warning, and the screenshot
# (kept as test/output/usage_page.png) is not blank.
use strict;
use warnings;

use Compress::Zlib qw(uncompress);
use Digest::SHA qw(hmac_sha256_hex);
use File::Basename qw(dirname);
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $python = '/usr/bin/python3';
my $app_py = dirname(__FILE__) . '/../examples/flask/app.py';
my $fixtures = dirname(__FILE__) . '/../fixtures/stripe/fixtures3.json';
my $secret = 'whsec_e2e_secret';
my $login_secret = 'login_e2e_secret';
my $chromium = '/usr/bin/chromium';

my $node = PostgreSQL::Test::Cluster->new('flask');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tiermeter;
	CREATE ROLE chat_app LOGIN;
	CREATE ROLE chat_billing LOGIN;
	SELECT tiermeter.grant_access('chat_app', 'app');
	SELECT tiermeter.grant_access('chat_app', 'reader');
	SELECT tiermeter.grant_access('chat_billing', 'billing');
	INSERT INTO tiermeter.stripe_prices VALUES ('price_e2e_basic', 'basic');
	-- time that would otherwise pass: 3500 of the free tier's 3600 s used
	SELECT tiermeter.record_usage('e2e', 3500);
});

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn = $node->connstr('postgres');
my ($out, $err) = ('', '');
my $app = IPC::Run::start(
	[ $python, $app_py, '--port', $port ], '>', \$out, '2>', \$err,
	init => sub {
		$ENV{TIERMETER_APP_DSN} = "$dsn user=chat_app";
		$ENV{TIERMETER_BILLING_DSN} = "$dsn user=chat_billing";
		$ENV{STRIPE_WEBHOOK_SECRET} = $secret;
		$ENV{LOGIN_LINK_SECRET} = $login_secret;
		$ENV{APP_SECRET_KEY} = 'cookie_e2e_secret';
	});

my $http = HTTP::Tiny->new(timeout => 30);
my $base = "http://127.0.0.1:$port";
my $up = 0;
for (1 .. 100)
{
	my $r = $http->get("$base/usage");
	if ($r->{status} != 599) { $up = 1; last; }
	select(undef, undef, undef, 0.1);
}
ok($up, 'the app answers') or diag($err);

sub call
{
	my ($method, $path, $org, $body, $headers) = @_;
	my %h = (%{ $headers || {} });
	$h{'X-Org-Id'} = $org if defined $org;
	$h{'Content-Type'} = 'application/json' if defined $body;
	my $r = $http->request($method, "$base$path",
		{ headers => \%h, defined $body ? (content => $body) : () });
	my $json = eval { decode_json($r->{content}) };
	return ($r, $json);
}

sub message
{
	my ($conv, %body) = @_;
	return call('POST', "/api/conversations/$conv/messages", 'e2e', encode_json(\%body));
}

# the org from the identity: its own usage, not another org's
my ($r, $j) = call('GET', '/api/organizations/e2e/usage', 'e2e');
is($r->{status}, 200, 'an org reads its own usage');
is($j->{organization_id} . ' ' . $j->{usage}{used_seconds} . ' ' . $j->{tier}{tier_id},
	'e2e 3500 free', 'usage_stats as the endpoint returns it');
($r) = call('GET', '/api/organizations/other/usage', 'e2e');
is($r->{status}, 403, "another org's usage is 403");
($r) = call('GET', '/api/organizations/e2e/usage', undef);
is($r->{status}, 401, 'no identity is 401');

# a first conversation; a second one at the same time is one too many
($r, $j) = message('c1');
is($r->{status}, 200, 'a first conversation is served');
($r, $j) = message('c2');
is($r->{status}, 429, 'a second concurrent conversation on the free tier is refused');
is($j->{error_type}, 'too_many_active_sessions', 'as too_many_active_sessions');
is(join(' ', map { $j->{details}{$_} } qw(tier used limit percentage_used)),
	'free 1 1 100', 'with the active sessions against the cap');
ok(defined $j->{details}{period_end} && @{ $j->{actions} } > 0 && defined $j->{message},
	'every field filled');
ok($r->{headers}{'retry-after'} > 0, 'and Retry-After');

# the monthly time runs out (the owner records what the conversation would)
$node->safe_psql('postgres', "SELECT tiermeter.record_usage('e2e', 100)");
($r, $j) = message('c1');
is($r->{status}, 429, 'once the monthly time is spent, a message is refused');
is($j->{error_type}, 'limit_exceeded', 'as limit_exceeded');
is(join(' ', map { $j->{details}{$_} } qw(tier limit percentage_used)),
	'free 3600 100', 'with the monthly seconds against the quota');
cmp_ok($j->{details}{used}, '>=', 3600, 'used is the monthly seconds');
ok(defined $j->{details}{period_end} && $r->{headers}{'retry-after'} > 0,
	'period_end and Retry-After until it');

# Stripe: an upgrade to basic, built from Stripe's fixture subscription
my $fx = decode_json(do { local $/; open my $f, '<', $fixtures or die $!; <$f> })->{resources};
my $now = time();
sub event
{
	my ($id, $created, $status) = @_;
	my $sub = decode_json(encode_json($fx->{subscription}));
	my $item = $sub->{items}{data}[0];
	$sub->{id} = 'sub_e2e';
	$sub->{customer} = 'cus_e2e';
	$sub->{status} = $status;
	$sub->{metadata} = { organizationId => 'e2e' };
	$sub->{billing_cycle_anchor} = $now - 86400;
	$item->{subscription} = 'sub_e2e';
	$item->{price}{id} = 'price_e2e_basic';
	$item->{price}{lookup_key} = undef;
	$item->{current_period_start} = $now - 86400;
	$item->{current_period_end} = $now - 86400 + 30 * 86400;
	return encode_json({ id => $id, object => 'event', api_version => '2025-03-31.basil',
		created => $created, livemode => JSON::PP::false, pending_webhooks => 1,
		type => 'customer.subscription.updated', data => { object => $sub } });
}
sub webhook
{
	my ($body, $sig_secret) = @_;
	my $t = time();
	my $sig = "t=$t,v1=" . hmac_sha256_hex("$t.$body", $sig_secret // $secret);
	return call('POST', '/webhooks/stripe', undef, $body, { 'Stripe-Signature' => $sig });
}
sub org_state
{
	return $node->safe_psql('postgres',
		"SELECT tier_id || ' ' || period_start FROM tiermeter.orgs WHERE org_id = 'e2e'");
}

my $upgrade = event('evt_e2e_2', $now - 10, 'active');
($r) = webhook($upgrade, 'whsec_wrong');
is($r->{status}, 400, 'a bad signature is 400');
is(org_state() =~ /^free /, 1, 'and changes nothing');
($r, $j) = webhook($upgrade);
is($r->{status} . ' ' . $j->{outcome}, '200 applied', 'a signed upgrade is applied');
my $state = org_state();
like($state, qr/^basic /, 'the org is on basic');
($r, $j) = message('c1', last => JSON::PP::true);
is($r->{status}, 200, 'the org is served again');
($r, $j) = message('c2');
is($r->{status}, 200, 'and may have a second conversation (3 on basic)');
($r, $j) = call('GET', '/api/organizations/e2e/usage', 'e2e');
is($j->{usage}{limit_seconds}, 18000, "basic's quota");
cmp_ok($j->{usage}{used_seconds}, '>=', 3600, 'the usage is kept');

($r, $j) = webhook($upgrade);
is($r->{status} . ' ' . $j->{outcome}, '200 duplicate', 'a replayed event is 2xx, duplicate');
($r, $j) = webhook(event('evt_e2e_1', $now - 100, 'canceled'));
is($r->{status} . ' ' . $j->{outcome}, '200 stale', 'an older event is 2xx, stale');
is(org_state(), $state, 'neither changed the org');
($r) = webhook('{"id": "evt_bad", "type": "customer.subscription.updated"}');
is($r->{status}, 400, 'a malformed event is 400');

# the usage page renders
($r) = call('GET', '/usage', 'e2e');
is($r->{status}, 200, 'the usage page renders');
like($r->{content}, qr/class="bar"/, 'with a bar');
($r) = call('GET', '/login?org=e2e&token=' . hmac_sha256_hex('e2e', 'wrong'), undef);
is($r->{status}, 403, 'a sign-in link with a bad token is 403');

# in a browser: an org at 85 % of its quota (the warning shows from 80 %)
$node->safe_psql('postgres', "SELECT tiermeter.record_usage('page', 3060)");
my $link = "$base/login?org=page&token=" . hmac_sha256_hex('page', $login_secret);
my $profile = "$PostgreSQL::Test::Utils::tmp_check/chromium";
my @browser = ($chromium, '--headless', '--no-sandbox', '--disable-gpu',
	'--disable-dev-shm-usage', "--user-data-dir=$profile", '--window-size=900,700');
my ($dom, $berr) = ('', '');
IPC::Run::run([ @browser, '--dump-dom', $link ], '>', \$dom, '2>', \$berr)
  or diag("chromium: $berr");
like($dom, qr/<h1>Usage of page<\/h1>/, 'Chromium followed the sign-in link to the usage page');
like($dom, qr/class="fill warn" style="width: 85\.0%"/, 'the bar is drawn at 85 %, in the warning colour');
like($dom, qr/id="warning">You have used 85\.0 % of your conversation time/, 'the warning is shown');
# a bar per feature the free tier includes (users, pages, documents), none
# for those it does not (spreadsheets, reports, ...)
is(join(' ', $dom =~ /id="feature-(\w+)"/g), 'conversation_seconds documents pages users',
	'a bar per feature the tier includes');

my $shot = "$PostgreSQL::Test::Utils::tmp_check/usage_page.png";
IPC::Run::run([ @browser, "--screenshot=$shot", $link ], '>', \my $sout, '2>', \$berr)
  or diag("chromium: $berr");
ok(-s $shot, 'a screenshot was saved');
# non-blank: its pixels (the PNG's inflated image data) take many values
my $png = do { local $/; open my $f, '<', $shot or die "$shot: $!"; binmode $f; <$f> } // '';
my ($pos, $idat) = (8, '');
while ($pos + 8 <= length $png)
{
	my ($len, $type) = unpack('N a4', substr($png, $pos, 8));
	$idat .= substr($png, $pos + 8, $len) if $type eq 'IDAT';
	$pos += 12 + $len;
}
my %values = map { $_ => 1 } unpack('C*', uncompress($idat) // '');
cmp_ok(scalar(keys %values), '>', 32, 'the screenshot is not blank (' . scalar(keys %values) . ' byte values)');

$app->kill_kill;
diag($err) if !Test::More->builder->is_passing;
$node->stop;
done_testing();
