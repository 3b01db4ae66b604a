// ngx_stream_mod example moderator console: plain JavaScript, no build step.
//
// Every action is one fetch() to the gateway with the user token the
// moderator pasted. What the gateway answers is shown as it came: HTTP
// status, Stream's APIError `code` and `message`, and for a rate limit the
// Retry-After and X-RateLimit-* headers. Gateway strings are only ever set
// with textContent, never parsed as HTML.
//
// Test hooks: #result-* fields (and #result[data-*]), one #log li per
// request (newest first, data-seq/-action/-status/-code/-retry-after),
// body[data-busy] while requests are in flight, #task[data-state] for the
// task poller (idle, polling, completed, failed, error, gave-up).

'use strict';

(function () {
    const POLL_MS = 1000;
    const MAX_POLLS = 300;
    const MAX_LOG = 200;

    const $ = (id) => document.getElementById(id);

    let seq = 0;
    let inFlight = 0;
    let pollRun = 0;

    // ----------------------------------------------------------------
    // settings

    function baseUrl() {
        const b = $('base').value.trim() || window.location.origin;
        return b.replace(/\/+$/, '');
    }

    function userToken() {
        // accept a pasted "Bearer eyJ..." as well as the bare token
        return $('token').value.replace(/\s+/g, ' ').trim().replace(/^Bearer /i, '');
    }

    function b64urlJson(part) {
        let s = part.replace(/-/g, '+').replace(/_/g, '/');
        while (s.length % 4) s += '=';
        const bin = atob(s);
        const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
    }

    // What the token claims, for display only: the gateway is what verifies
    // it (the browser has no key to do so, and must not have one).
    function showWhoami() {
        const el = $('whoami');
        const tok = userToken();
        el.dataset.user = '';
        el.className = '';
        if (tok === '') {
            el.textContent = 'no token';
            return;
        }
        const parts = tok.split('.');
        let claims = null;
        if (parts.length === 3) {
            try { claims = b64urlJson(parts[1]); } catch (e) { claims = null; }
        }
        if (!claims || typeof claims !== 'object') {
            el.textContent = 'not a JWT (the gateway will answer 401)';
            el.className = 'bad';
            return;
        }
        let text = 'user_id ' + JSON.stringify(claims.user_id === undefined ? null : claims.user_id);
        if (claims.role !== undefined) text += ', role ' + JSON.stringify(claims.role);
        if (typeof claims.exp === 'number') {
            const left = Math.round(claims.exp - Date.now() / 1000);
            text += left > 0 ? ', expires in ' + Math.ceil(left / 60) + ' min'
                             : ', expired ' + Math.ceil(-left / 60) + ' min ago';
            if (left <= 0) el.className = 'bad';
        }
        text += ' (not verified here: the gateway verifies it)';
        el.textContent = text;
        if (typeof claims.user_id === 'string') el.dataset.user = claims.user_id;
    }

    // ----------------------------------------------------------------
    // one request to the gateway

    function outcomeOf(r) {
        if (r.status === 0) return 'network error';
        if (r.status >= 200 && r.status < 300) return 'done';
        if (r.status === 401) return 'not authenticated';
        if (r.status === 403 && r.code === 17) return 'denied';
        if (r.status === 429) return 'rate-limited';
        if (r.status >= 500) return 'upstream error';
        return 'rejected';
    }

    function setBusy(delta) {
        inFlight += delta;
        document.body.dataset.busy = String(inFlight);
    }

    // -> {seq, action, method, path, status, code, message, retryAfter,
    //     limit, remaining, reset, body, json, outcome}; status 0 when the
    //     browser got no answer it may read (network, CORS).
    async function call(action, method, path, body) {
        const r = {
            seq: ++seq, action, method, path, status: 0, code: null, message: '',
            retryAfter: null, limit: null, remaining: null, reset: null,
            body: '', json: null, outcome: '',
        };
        const headers = {};
        const tok = userToken();
        if (tok !== '') headers['Authorization'] = 'Bearer ' + tok;
        const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
        if (body !== undefined) {
            headers['Content-Type'] = 'application/json';
            init.body = JSON.stringify(body);
        }
        r.request = method + ' ' + path + (init.body !== undefined ? ' ' + init.body : '');

        setBusy(+1);
        try {
            const res = await fetch(baseUrl() + path, init);
            r.status = res.status;
            r.retryAfter = res.headers.get('Retry-After');
            r.limit = res.headers.get('X-RateLimit-Limit');
            r.remaining = res.headers.get('X-RateLimit-Remaining');
            r.reset = res.headers.get('X-RateLimit-Reset');
            r.body = await res.text();
            try { r.json = JSON.parse(r.body); } catch (e) { r.json = null; }
            if (r.json && typeof r.json === 'object') {
                if (typeof r.json.code === 'number') r.code = r.json.code;
                if (typeof r.json.message === 'string') r.message = r.json.message;
            }
        } catch (e) {
            r.status = 0;
            r.message = 'no readable answer from ' + baseUrl() + ': ' + e.message
                + ' (gateway down, or another origin without CORS for this page)';
        } finally {
            setBusy(-1);
        }
        r.outcome = outcomeOf(r);
        showResult(r);
        addLog(r);
        return r;
    }

    function text(v) {
        return v === null || v === undefined ? '' : String(v);
    }

    function showResult(r) {
        const panel = $('result');
        panel.dataset.state = r.outcome;
        panel.dataset.seq = String(r.seq);
        panel.dataset.status = String(r.status);
        panel.dataset.code = text(r.code);
        $('result-action').textContent = r.action;
        $('result-request').textContent = r.request;
        $('result-outcome').textContent = r.outcome;
        $('result-status').textContent = r.status === 0 ? '' : String(r.status);
        $('result-code').textContent = text(r.code);
        $('result-message').textContent = r.message;
        $('result-retry-after').textContent = text(r.retryAfter);
        $('result-ratelimit-limit').textContent = text(r.limit);
        $('result-ratelimit-remaining').textContent = text(r.remaining);
        const reset = $('result-ratelimit-reset');
        reset.textContent = text(r.reset);
        if (r.reset !== null && /^\d+$/.test(r.reset)) {
            reset.title = new Date(Number(r.reset) * 1000).toISOString();
        } else {
            reset.removeAttribute('title');
        }
        let pretty = r.body;
        if (r.json !== null) pretty = JSON.stringify(r.json, null, 2);
        $('result-body').textContent = pretty;
    }

    function span(cls, value) {
        const s = document.createElement('span');
        s.className = cls;
        s.textContent = value;
        return s;
    }

    function addLog(r) {
        const li = document.createElement('li');
        li.dataset.seq = String(r.seq);
        li.dataset.action = r.action;
        li.dataset.status = String(r.status);
        li.dataset.code = text(r.code);
        li.dataset.outcome = r.outcome;
        if (r.retryAfter !== null) li.dataset.retryAfter = r.retryAfter;
        li.className = 'outcome-' + r.outcome.replace(/[^a-z]+/g, '-');

        li.append(span('time', new Date().toLocaleTimeString()), ' ',
                  span('action', r.action), ' ',
                  span('request', r.method + ' ' + r.path), ' \u2192 ',
                  span('status', r.status === 0 ? 'no answer' : String(r.status)));
        if (r.code !== null) li.append(' ', span('code', 'code ' + r.code));
        if (r.message !== '') li.append(' ', span('message', r.message));
        if (r.retryAfter !== null) li.append(' ', span('retry-after', 'Retry-After: ' + r.retryAfter));
        if (r.limit !== null) {
            li.append(' ', span('ratelimit', 'X-RateLimit-Limit: ' + r.limit
                + ', -Remaining: ' + text(r.remaining) + ', -Reset: ' + text(r.reset)));
        }
        const log = $('log');
        log.prepend(li);
        while (log.children.length > MAX_LOG) log.lastElementChild.remove();
    }

    // ----------------------------------------------------------------
    // the task poller (bulk deactivation)

    const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

    function taskState(state, status) {
        $('task').dataset.state = state;
        if (status !== undefined) $('task-status').textContent = status;
        const bar = $('task-progress');
        if (state === 'polling') {
            bar.removeAttribute('value');        // indeterminate
        } else {
            bar.max = 1;
            bar.value = state === 'completed' ? 1 : 0;
        }
    }

    async function pollTask(taskId) {
        const run = ++pollRun;
        const panel = $('task');
        panel.hidden = false;
        panel.dataset.taskId = taskId;
        $('task-id').textContent = taskId;
        $('task-polls').textContent = '0';
        $('task-history').replaceChildren();
        $('task-result').textContent = '';
        taskState('polling', 'submitted');

        let polls = 0;
        let wait = POLL_MS;
        while (polls < MAX_POLLS) {
            await sleep(wait);
            if (run !== pollRun) return;        // a newer task replaced this one
            wait = POLL_MS;
            polls++;
            const r = await call('get_task', 'GET', '/moderation/tasks/' + encodeURIComponent(taskId));
            if (run !== pollRun) return;
            $('task-polls').textContent = String(polls);

            const item = document.createElement('li');
            if (r.status === 429) {
                // the gateway's per-moderator limit counts polls too: wait
                // as long as it says, then go on
                const after = Number.parseInt(r.retryAfter, 10);
                wait = Math.max(POLL_MS, (Number.isFinite(after) ? after : 1) * 1000);
                item.textContent = 'poll ' + polls + ': rate-limited, next in ' + wait / 1000 + ' s';
                $('task-history').append(item);
                continue;
            }
            if (r.status !== 200 || !r.json || typeof r.json.status !== 'string') {
                item.textContent = 'poll ' + polls + ': HTTP ' + (r.status || 'no answer')
                    + (r.code !== null ? ' code ' + r.code : '') + ' ' + r.message;
                $('task-history').append(item);
                taskState('error', 'polling failed (HTTP ' + (r.status || 'no answer') + ')');
                return;
            }
            const status = r.json.status;
            item.textContent = 'poll ' + polls + ': ' + status;
            item.dataset.status = status;
            $('task-history').append(item);
            if (status === 'completed' || status === 'failed') {
                taskState(status, status);
                const detail = status === 'completed' ? r.json.result : r.json.error;
                $('task-result').textContent = detail === undefined ? '' : JSON.stringify(detail, null, 2);
                return;
            }
            taskState('polling', status);
        }
        taskState('gave-up', 'still not finished after ' + MAX_POLLS + ' polls; stopped polling');
    }

    // ----------------------------------------------------------------
    // the forms

    function val(id) {
        return $(id).value.trim();
    }

    function checked(id) {
        return $(id).checked;
    }

    function idList(id) {
        return $(id).value.split(',').map((s) => s.trim()).filter((s) => s !== '');
    }

    function seg(id) {            // a path parameter: the gateway checks it
        return encodeURIComponent(val(id));
    }

    const actions = {
        ban() {
            const body = { target_user_id: val('ban-target') };
            if (val('ban-reason') !== '') body.reason = val('ban-reason');
            if (val('ban-timeout') !== '') body.timeout = Number(val('ban-timeout'));
            if (checked('ban-ip')) body.ip_ban = true;
            return call('ban', 'POST', '/moderation/ban', body);
        },

        unban() {
            return call('unban', 'POST', '/moderation/unban?target_user_id='
                + encodeURIComponent(val('unban-target')), {});
        },

        mute_users() {
            const body = {};
            const ids = idList('mute-users');
            if (ids.length) body.user_ids = ids;
            if (checked('mute-all')) body.mute_all_users = true;
            if (checked('mute-audio')) body.audio = true;
            if (checked('mute-video')) body.video = true;
            if (checked('mute-screenshare')) body.screenshare = true;
            return call('mute_users', 'POST', '/calls/' + seg('mute-call-type') + '/'
                + seg('mute-call-id') + '/mute_users', body);
        },

        kick_user() {
            const body = { user_id: val('kick-user') };
            if (checked('kick-block')) body.block = true;
            return call('kick_user', 'POST', '/calls/' + seg('kick-call-type') + '/'
                + seg('kick-call-id') + '/kick', body);
        },

        block_user() {
            return call('block_user', 'POST', '/moderation/block',
                { blocked_user_id: val('block-target') });
        },

        async deactivate_users() {
            const body = { user_ids: idList('deactivate-users') };
            if (checked('deactivate-messages')) body.mark_messages_deleted = true;
            const r = await call('deactivate_users', 'POST', '/moderation/users/deactivate', body);
            if (r.status >= 200 && r.status < 300 && r.json && typeof r.json.task_id === 'string') {
                pollTask(r.json.task_id);
            }
            return r;
        },
    };

    function wire(form) {
        const action = actions[form.dataset.action];
        const button = form.querySelector('button[type=submit]');
        form.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            button.disabled = true;
            try {
                await action();
            } finally {
                button.disabled = false;
            }
        });
    }

    function init() {
        const base = $('base');
        if (base.value === '') base.value = window.location.origin;
        $('token').addEventListener('input', showWhoami);
        showWhoami();
        for (const form of document.querySelectorAll('form[data-action]')) wire(form);
        $('log-clear').addEventListener('click', () => $('log').replaceChildren());
        document.body.dataset.ready = '1';
    }

    init();
})();
