// make bench: the forms a Node.js backend can call check_org_limits in,
// through node-postgres (the `pg` package) and its pool, side by side with
// SELECT 1 on the same pool.  Connection from the PG* environment variables.
//
//   node bench/node_forms.js ORGS SECONDS
//
// Each form runs as a named (prepared) statement, 8 requests in flight, for
// SECONDS; prints requests per second, the ratio to SELECT 1, and what the
// client gets back (named columns, or one composite as a string).
'use strict';
const { Pool } = require('pg');

const orgs = Number(process.argv[2] || 100000);
const seconds = Number(process.argv[3] || 5);
const inflight = 8;

const forms = [
	['SELECT 1', 'SELECT 1 AS one', false],
	['SELECT f($1)', 'SELECT tiermeter.check_org_limits($1)', true],
	['SELECT * FROM f($1)', 'SELECT * FROM tiermeter.check_org_limits($1)', true],
	['SELECT (f($1)).*', 'SELECT (tiermeter.check_org_limits($1)).*', true],
	['SELECT (r).* FROM (SELECT f($1) AS r OFFSET 0) s',
		'SELECT (s.r).* FROM (SELECT tiermeter.check_org_limits($1) AS r OFFSET 0) s', true],
	['SELECT row_to_json(f($1)) AS s (parsed by the driver)',
		'SELECT row_to_json(tiermeter.check_org_limits($1)) AS s', true],
	['SELECT (r).allowed, (r).reason, (r).used, (r).quota ...',
		'SELECT (s.r).allowed, (s.r).reason, (s.r).used, (s.r).quota, (s.r).period_end'
		+ ' FROM (SELECT tiermeter.check_org_limits($1) AS r OFFSET 0) s', true],
];

async function run(pool, name, text, withOrg) {
	let done = 0;
	const end = Date.now() + seconds * 1000;
	let sample;
	async function worker(w) {
		while (Date.now() < end) {
			const org = 'org-' + (1 + Math.floor(Math.random() * orgs));
			const res = await pool.query({ name: 'q' + name.length + '_' + text.length, text,
				values: withOrg ? [org] : [] });
			sample = res.rows[0];
			done++;
		}
	}
	const t0 = Date.now();
	await Promise.all(Array.from({ length: inflight }, (_, w) => worker(w)));
	return { rps: done / ((Date.now() - t0) / 1000), sample };
}

(async () => {
	const pool = new Pool({ max: inflight });
	const results = [];
	for (const [name, text, withOrg] of forms)
		results.push([name, await run(pool, name, text, withOrg)]);
	await pool.end();
	const base = results[0][1].rps;
	for (const [name, r] of results) {
		let row = r.sample;
		if (row.s !== undefined && typeof row.s === 'object') row = row.s;
		const keys = Object.keys(row);
		const shape = keys.length === 1 ? `one column (${typeof row[keys[0]]})`
			: `${keys.length} named fields, used as ${typeof row.used}`;
		console.log(`${name.padEnd(52)} ${r.rps.toFixed(0).padStart(8)} req/s  ${(r.rps / base).toFixed(2)} of SELECT 1  ${shape}`);
	}
})().catch((e) => { console.error(e); process.exit(1); });
