# NOTIFY tiermeter: any role that can connect may LISTEN, so each limit event
# (tier changes, unmapped Stripe events, thresholds reached)
# is announced with its id and kind only; org ids and Stripe ids stay in
# limit_events, readable by a role allowed to.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('notify');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$node->safe_psql('postgres', 'CREATE ROLE nobody LOGIN');

# a role with no grant at all may listen
my ($rc, $out, $err) = $node->psql('postgres', 'LISTEN tiermeter', extra_params => [ '-U', 'nobody' ]);
is($rc, 0, 'a role without grants can LISTEN tiermeter');

# a tier change and an unmapped Stripe event, heard by a listener
($rc, $out, $err) = $node->psql('postgres', q{
LISTEN tiermeter;
SELECT tiermeter.set_org_tier('secret-org-1', 'basic');
SELECT tiermeter.apply_subscription_event('{"id": "evt_secret", "type": "customer.subscription.created",
	"created": 1700000000, "data": {"object": {"object": "subscription", "id": "sub_secret",
	"customer": "cus_secret", "status": "active", "metadata": {}}}}');
});
is($rc, 0, 'the events were written');
my @payloads = $out =~ /Asynchronous notification "tiermeter" with payload "(.*)" received/g;
is(scalar @payloads, 2, 'two notifications');

my $ids = $node->safe_psql('postgres',
	"SELECT string_agg(format('{\"id\": %s, \"kind\": \"%s\"}', id, kind), '|' ORDER BY id) FROM tiermeter.limit_events");
is(join('|', @payloads), $ids, 'each payload is exactly {"id", "kind"} of its limit_events row');
unlike($out, qr/secret/, 'no org, customer, subscription or event id is announced');

# a threshold crossed: one notification per threshold_reached row, sent
# when the recording transaction commits, none when it rolls back
($rc, $out, $err) = $node->psql('postgres', q{
LISTEN tiermeter;
BEGIN;
SELECT used FROM tiermeter.record_usage('secret-org-2', 3000);
ROLLBACK;
SELECT 'after the rollback';
SELECT used FROM tiermeter.record_usage('secret-org-2', 3600);
SELECT used FROM tiermeter.record_usage('secret-org-2', 1);
});
is($rc, 0, 'usage recorded across the thresholds');
my ($before, $after) = split /after the rollback/, $out;
unlike($before, qr/Asynchronous notification/, 'a rolled-back crossing announces nothing');
@payloads = $after =~ /Asynchronous notification "tiermeter" with payload "(.*)" received/g;
is(join('|', @payloads), $node->safe_psql('postgres',
	"SELECT string_agg(format('{\"id\": %s, \"kind\": \"%s\"}', id, kind), '|' ORDER BY id)
	   FROM tiermeter.limit_events WHERE org_id = 'secret-org-2'"),
	'the crossing of 80 and 100 % in one call: two notifications, id and kind only');
is(scalar @payloads, 2, 'and no more for the calls after it');
unlike($out, qr/secret/, 'no org id is announced');

# the reader fetches the rest with its grant
is($node->safe_psql('postgres',
	"SELECT org_id FROM tiermeter.limit_events WHERE kind = 'tier_changed'"),
	'secret-org-1', 'limit_events holds the rest');

done_testing();
