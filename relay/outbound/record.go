package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dsn"
	"github.com/mailhop/mailhop/relay/logline"
	"github.com/mailhop/mailhop/relay/mime7bit"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// Defaults for the ages in [delivery] when the configuration leaves them 0.
const (
	defaultMaxQueueAge  = 120 * time.Hour
	defaultDelayWarning = 4 * time.Hour
)

// record turns an attempt into reports and a queue.Result: expiry first,
// then the DSNs, then one commit of both (DoneWithReports: a crash never
// leaves a report queued without the outcome that called for it, which
// would send it twice), then the log lines.
func (a *Agent) record(env *queue.Envelope, cfg *config.Config, at *attempt, body queue.Body) {
	now := a.now()
	expires := expiresAt(env, cfg)
	expired := map[int]bool{}
	waiting := at.waiting()
	for i := range at.rcpts {
		r := &at.rcpts[i]
		// Not before an attempt: Postfix bounces expired mail after the
		// attempt that finds it too old, and one that waits for a
		// connection slot (in its active queue) gets that attempt.
		if r.state == queue.Pending && !waiting[r.index] && !env.Arrived.IsZero() && !now.Before(expires) {
			last := "no attempt made"
			if r.reply != nil {
				last = r.reply.Error()
				if r.reply.Code != 0 {
					r.diag = r.reply // the server's last word stays in the report
				}
			}
			r.state = queue.Failed
			r.reply = &smtperr.Error{Enhanced: "4.4.7",
				Msg: fmt.Sprintf("message expired after %s in the queue; last error: %s", queueAge(now.Sub(env.Arrived)), last)}
			expired[r.index] = true
		}
	}
	res := queue.Result{LastError: at.lastErr, DelayWarned: env.DelayWarned}
	var reps []*report
	if body != nil {
		reps = a.reports(env, cfg, at, body, &res, now)
	}
	res.RetryBy = retryBy(env, cfg, res.DelayWarned, now)
	wait := at.slotWait(waiting)
	if len(wait) > 0 {
		// No server was tried for the recipients left: the message
		// waits for a slot of each domain in wait, parked (as Postfix
		// keeps it in its active queue), no attempt counted and its
		// schedule unchanged.
		res.Uncounted, res.Park, res.RetryAt = true, true, env.NextAttempt
	}
	if at.cutShort() {
		// Recipients a shutdown cut short are due at the restart, as
		// Postfix requeues its active queue at start, not a retry
		// interval away for what another domain deferred. When only they
		// are left pending, no server gave an answer about them: no
		// attempt is counted, their last error as it was.
		res.RetryAt = now
		if !at.pending() {
			res.Uncounted, res.LastError = true, env.LastError
		}
	}
	var err error
	if len(reps) == 0 {
		err = a.q.Done(env.ID, attemptResult(env, at, res))
	} else if err = a.q.DoneWithReports(env.ID, attemptResult(env, at, res), queueReports(reps)); err != nil && !errors.Is(err, queue.ErrNotFound) {
		// Nothing was stored: record the outcome without the reports, as
		// when a report cannot be built. A failure report's recipients
		// stay pending, to be reported next time.
		a.log.Error("cannot queue reports; recipients to bounce stay pending", at.ref(env).attrs("err", err)...)
		for _, rep := range reps {
			rep.unsent(at, &res, env, err)
		}
		reps = nil
		err = a.q.Done(env.ID, attemptResult(env, at, res))
	}
	if errors.Is(err, queue.ErrNotFound) {
		// `mailhop queue delete` during the attempt: the delete won, the
		// attempt's outcome (logged below) is all that is left of it —
		// and its reports, when the delete came while they were being
		// committed (they are queued then, and are logged).
		a.log.Info("message deleted during its delivery attempt", at.ref(env).attrs()...)
		for _, rep := range reps {
			if _, queued := a.q.Due(rep.env.ID); queued {
				a.logReport(at.ref(env), env, rep)
			}
		}
	} else if err != nil {
		a.log.Error("recording attempt failed", at.ref(env).attrs("err", err)...)
	} else {
		for _, rep := range reps {
			a.logReport(at.ref(env), env, rep)
		}
	}
	if !errors.Is(err, queue.ErrNotFound) {
		// Whichever frees a slot first calls it back; the others then
		// find it no longer parked (or parked anew) when their turn comes.
		for _, d := range wait {
			a.domains.park(d, env.ID)
		}
	}
	a.logAttempt(env, at, expired)
	if a.onRecord != nil {
		a.onRecord(env.ID, false)
	}
}

// pending reports whether any recipient of at is left pending.
func (at *attempt) pending() bool {
	for _, r := range at.rcpts {
		if r.state == queue.Pending {
			return true
		}
	}
	return false
}

// waiting returns the recipients of at's groups that waited for a
// connection slot in vain (no server tried).
func (at *attempt) waiting() map[int]bool {
	var w map[int]bool
	for _, g := range at.groups {
		if !g.waiting {
			continue
		}
		if w == nil {
			w = make(map[int]bool)
		}
		for _, r := range g.rcpts {
			w[r.index] = true
		}
	}
	return w
}

// slotWait returns the domains the message waits for a connection slot of
// when every recipient at leaves pending waited for one (in waiting), none
// otherwise: one a server was tried for keeps its retry schedule. It waits
// for all of them, so that one domain's slot freeing is not held up by
// another's (a tarpit's session).
func (at *attempt) slotWait(waiting map[int]bool) []string {
	if len(waiting) == 0 {
		return nil
	}
	for _, r := range at.rcpts {
		if r.state == queue.Pending && !waiting[r.index] {
			return nil
		}
	}
	var ds []string
	for _, g := range at.groups {
		if g.waiting {
			ds = append(ds, g.domain)
		}
	}
	return ds
}

// retryBy is the latest time for env's next attempt: its delay warning,
// when not yet sent, and its expiry are due on time, not at the end of the
// next retry interval (with the default intervals, a 4h warning came at
// 7h51m). Zero when neither is still ahead of now.
func retryBy(env *queue.Envelope, cfg *config.Config, warned bool, now time.Time) time.Time {
	if env.Arrived.IsZero() {
		return time.Time{}
	}
	var by time.Time
	if exp := expiresAt(env, cfg); exp.After(now) {
		by = exp
	}
	if w := warnsAt(env, cfg); !warned && w.After(now) && (by.IsZero() || w.Before(by)) {
		by = w
	}
	return by
}

// overdue reports whether env has reached its expiry, or its delay warning
// when not yet sent.
func overdue(env *queue.Envelope, cfg *config.Config, now time.Time) bool {
	return !env.Arrived.IsZero() &&
		(!now.Before(expiresAt(env, cfg)) || !env.DelayWarned && !now.Before(warnsAt(env, cfg)))
}

// expiresAt is when env has been queued for max_queue_age: its pending
// recipients then bounce.
func expiresAt(env *queue.Envelope, cfg *config.Config) time.Time {
	return env.Arrived.Add(orDur(cfg.Delivery.MaxQueueAge, defaultMaxQueueAge))
}

// warnsAt is when env's delay warning (delay_warning) is due.
func warnsAt(env *queue.Envelope, cfg *config.Config) time.Time {
	return env.Arrived.Add(orDur(cfg.Delivery.DelayWarning, defaultDelayWarning))
}

// logReport logs a report queued about env, the message ref names.
func (a *Agent) logReport(ref msgRef, env *queue.Envelope, rep *report) {
	a.log.Info("report queued", ref.attrs("report_id", rep.env.ID, "action", rep.action, "to", env.From, "rcpts", rep.rcpts)...)
}

// attemptResult completes res with the recipients' outcomes of at.
// A recipient that only waited for a connection slot keeps the reply of
// its last real attempt after the wait's own (see lastReply).
func attemptResult(env *queue.Envelope, at *attempt, res queue.Result) queue.Result {
	res.Recipients = nil
	waiting := at.waiting()
	for _, r := range at.rcpts {
		if r.reply != nil && r.state != queue.Delivered && res.LastError == "" {
			res.LastError = env.Recipients[r.index].Address + ": " + r.reply.Error()
		}
		u := r.update()
		if waiting[r.index] && r.state == queue.Pending && u.Reply != "" {
			if last := lastReply(&env.Recipients[r.index]); last != nil {
				u.Reply += lastReplySep + replyWithCode(last)
			}
		}
		res.Recipients = append(res.Recipients, u)
	}
	return res
}

// The reply of a slot wait (limitedGroup) starts so; a wait that followed
// a real attempt records that attempt's reply after it, behind
// lastReplySep: `queue list` says the recipient waits for a slot, and a
// delay notice given while it waits again still has the reply to quote
// (the wait's text had taken its place, and the notice blamed
// delivery.per_domain_concurrency for the destination's trouble).
const (
	slotWaitEnhanced = "4.4.5"
	slotWaitPrefix   = "no connection slot to "
	lastReplySep     = "; last reply: "
)

// lastReply is the reply of rc's last real attempt, as the queue keeps it
// (through any slot waits since), or nil when no server was tried for it.
func lastReply(rc *queue.Recipient) *smtperr.Error {
	if rc.Reply == "" {
		return nil
	}
	s := rc.Reply
	code := rc.Code
	if code == 0 && strings.HasPrefix(s, slotWaitEnhanced+" "+slotWaitPrefix) {
		_, last, ok := strings.Cut(s, lastReplySep)
		if !ok {
			return nil // only waits so far
		}
		s = last
		if c, rest, ok := strings.Cut(s, " "); ok && len(c) == 3 {
			if n, err := strconv.Atoi(c); err == nil && n >= 200 && n <= 599 {
				code, s = n, rest
			}
		}
	}
	enh, text := smtperr.ParseReply(s)
	return &smtperr.Error{Code: code, Enhanced: enh, Msg: text}
}

// replyWithCode is e as lastReply reads it back: the code (when a server
// gave one), the enhanced code and the text.
func replyWithCode(e *smtperr.Error) string {
	if e.Code != 0 {
		return strconv.Itoa(e.Code) + " " + replyText(e)
	}
	return replyText(e)
}

// update is the queue's record of r.
func (r rcptResult) update() queue.RcptUpdate {
	u := queue.RcptUpdate{Index: r.index, State: r.state}
	if r.reply != nil {
		u.Code, u.Reply = r.reply.Code, replyText(r.reply)
	}
	return u
}

// queueAge writes how long a message was queued, to the second below an
// hour and to the minute above (never rounded up: "5m0s" for 4m44s read as
// more than a max_queue_age of 5m).
func queueAge(d time.Duration) time.Duration {
	if d < time.Hour {
		return d.Truncate(time.Second)
	}
	return d.Truncate(time.Minute)
}

// report is a DSN built for one attempt, to be queued with its outcome.
type report struct {
	env    *queue.Envelope
	body   io.Reader
	action string // failed, relayed, delayed
	rcpts  int
	failed []int // failure report: indexes into attempt.rcpts of its recipients
}

// unsent undoes what queueing r would have recorded, when it cannot be
// queued: a failure report's recipients stay Pending (reported next time),
// a delay report is due again; a success report is only lost.
func (r *report) unsent(at *attempt, res *queue.Result, env *queue.Envelope, err error) {
	switch r.action {
	case "failed":
		for _, i := range r.failed {
			at.rcpts[i].state = queue.Pending
		}
		res.LastError = "queueing bounce: " + err.Error()
	case "delayed":
		res.DelayWarned = env.DelayWarned
	}
}

func queueReports(reps []*report) []queue.Report {
	var out []queue.Report
	for _, r := range reps {
		out = append(out, queue.Report{Env: r.env, Body: r.body})
	}
	return out
}

// reports builds the DSNs this attempt calls for, to be queued with its
// outcome. A report that cannot be built is handled as one that cannot be
// queued (report.unsent).
func (a *Agent) reports(env *queue.Envelope, cfg *config.Config, at *attempt, body queue.Body, res *queue.Result, now time.Time) []*report {
	if env.From == "" {
		// Never a report about a report (RFC 3464 §2, RFC 5321 §6.1).
		return nil
	}
	remote := func(r *rcptResult) string { return r.remote }
	var failed, success, delayed []dsn.Outcome
	var failedIdx []int
	waiting := at.waiting()
	for i := range at.rcpts {
		r := &at.rcpts[i]
		rc := &env.Recipients[r.index]
		switch r.state {
		case queue.Failed:
			if rc.Notify.Has(queue.NotifyFailure) {
				failed = append(failed, dsn.Outcome{Rcpt: rc, Action: "failed", Reply: r.reply, Diag: r.diag, Remote: remote(r)})
				failedIdx = append(failedIdx, i)
			}
		case queue.Delivered:
			// Not again when queued before the attempt's end
			// (recordDelivered).
			if successReport(env, rc, r) && !r.reported {
				success = append(success, dsn.Outcome{Rcpt: rc, Action: "relayed", Reply: r.reply, Remote: remote(r)})
			}
		case queue.Pending:
			if rc.Notify.Has(queue.NotifyDelay) {
				// RFC 3464 §2.3.9: when the retries end (the message
				// expires), as Postfix's delay reports say.
				reply := r.reply
				if last := lastReply(rc); waiting[r.index] && last != nil {
					// No server was tried this time, only a slot of its
					// domain waited for: why the mail is late is what
					// its last real attempt was told, as Postfix's delay
					// notice gives the last deferral's reason.
					reply = last
				}
				delayed = append(delayed, dsn.Outcome{Rcpt: rc, Action: "delayed", Reply: reply, Remote: remote(r), Until: expiresAt(env, cfg)})
			}
		}
	}
	host := cfg.Hostname
	var reps []*report
	add := func(rcpts []dsn.Outcome, idx []int) {
		rep, err := a.buildReport(env, body, host, rcpts, now)
		if err != nil {
			a.log.Error("cannot build report", at.ref(env).attrs("action", rcpts[0].Action, "err", err)...)
			(&report{action: rcpts[0].Action, failed: idx}).unsent(at, res, env, err)
			return
		}
		rep.failed = idx
		reps = append(reps, rep)
	}
	if len(failed) > 0 {
		add(failed, failedIdx)
	}
	if len(success) > 0 {
		add(success, nil)
	}
	if !env.DelayWarned && !now.Before(warnsAt(env, cfg)) && hasPending(at) {
		// The flag goes in the same commit as the delay report.
		res.DelayWarned = true
		if len(delayed) > 0 {
			add(delayed, nil)
		}
	}
	return reps
}

// successReport reports whether r, delivered to rc, calls for a success
// report from this relay. RFC 3461 §5.2.1: handed to a server with DSN,
// NOTIFY went with it and reporting is that server's job. §5.2.2: to a
// server without DSN, we report "relayed" ourselves. Never a report about a
// report (RFC 3464 §2, RFC 5321 §6.1).
func successReport(env *queue.Envelope, rc *queue.Recipient, r *rcptResult) bool {
	return env.From != "" && rc.Notify.Has(queue.NotifySuccess) && r.relayed
}

func hasPending(at *attempt) bool {
	for _, r := range at.rcpts {
		if r.state == queue.Pending {
			return true
		}
	}
	return false
}

// buildReport builds a DSN from the null sender about rcpts of env.
func (a *Agent) buildReport(env *queue.Envelope, body queue.Body, hostname string, rcpts []dsn.Outcome, now time.Time) (*report, error) {
	if env.RequireTLS && env.Ret != "" {
		// RFC 8689 §5: the report travels without REQUIRETLS, so it
		// carries the original's header only, never its body.
		e := *env
		e.Ret = ""
		env = &e
	}
	msg, err := dsn.Build(&dsn.Input{Hostname: hostname, Env: env, Body: body, Outcomes: rcpts, Now: now})
	if err != nil {
		return nil, err
	}
	rep := &queue.Envelope{
		From:       "",
		Recipients: []queue.Recipient{{Address: env.From}},
		Arrived:    now,
		SMTPUTF8:   !mime7bit.IsASCII([]byte(env.From)),
		BodyType:   msg.BodyType,
	}
	return &report{env: rep, body: msg.Reader(), action: rcpts[0].Action, rcpts: len(rcpts)}, nil
}

// BounceNow bounces every pending recipient of message id at once (the
// operator's `mailhop queue bounce ID`): a failure report goes to the
// sender (unless NOTIFY or a null sender forbid it) and the recipients are
// marked Failed.
func (a *Agent) BounceNow(id string) error {
	env, err := a.q.Claim(id)
	if err != nil {
		return err
	}
	cfg := a.config()
	body, err := a.q.Body(id)
	if err != nil {
		_ = a.q.Requeue(id)
		return err
	}
	defer body.Close()
	at := &attempt{messageID: scanStored(body).messageID}
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.State != queue.Pending {
			continue
		}
		msg := "bounced by the administrator"
		if r.Reply != "" {
			msg += "; last error: " + r.Reply
		}
		at.rcpts = append(at.rcpts, rcptResult{index: i, state: queue.Failed,
			reply: &smtperr.Error{Enhanced: "5.0.0", Msg: msg}})
	}
	a.record(env, cfg, at, body)
	for _, r := range at.rcpts {
		if r.state != queue.Failed {
			return fmt.Errorf("outbound: bounce of %s could not be queued; recipients stay pending", id)
		}
	}
	return nil
}

// replyText is what the queue keeps as a recipient's last reply:
// "5.1.1 text", the code being stored apart.
func replyText(e *smtperr.Error) string {
	if e.Enhanced != "" {
		return e.Enhanced + " " + e.Msg
	}
	return e.Msg
}

func orDur(d config.Duration, def time.Duration) time.Duration {
	if d.Duration > 0 {
		return d.Duration
	}
	return def
}

// logAttempt writes one line per domain group attempted and one per final
// recipient outcome not logged yet (recordDelivered), and counts them.
func (a *Agent) logAttempt(env *queue.Envelope, at *attempt, expired map[int]bool) {
	next := "" // the next attempt, looked up only when a group is pending
	for _, g := range at.groups {
		if g.dropped && len(g.rcpts) == 0 {
			continue // cut short by the shutdown: logged as such
		}
		attrs := []slog.Attr{slog.String("queue_id", env.ID), slog.String("message_id", at.messageID),
			slog.String("domain", g.domain), slog.String("mx", g.mx), slog.String("addr", g.addr),
			slog.String("tls", g.tls), slog.String("tls_policy", g.policy), slog.Bool("tls_verified", g.verif),
			slog.Duration("dur", g.dur.Round(time.Millisecond))}
		if env.RequireTLS {
			attrs = append(attrs, slog.Bool("requiretls", true))
		}
		code, reply := 0, ""
		if g.err != nil {
			code, reply = g.err.Code, g.err.Error()
		} else if len(g.rcpts) > 0 && g.rcpts[0].reply != nil {
			code, reply = g.rcpts[0].reply.Code, replyText(g.rcpts[0].reply)
		}
		attrs = append(attrs, slog.Int("code", code), slog.String("reply", reply))
		// A recipient the shutdown cut short is pending too (dropCut).
		pending := groupPending(g) || g.dropped
		if pending && next == "" {
			if due, ok := a.q.Due(env.ID); ok {
				next = due.Format(time.RFC3339)
			}
		}
		if pending && g.waiting && a.parked(env.ID) {
			// Due when a slot frees (or at its delay warning or expiry).
			attrs = append(attrs, slog.Bool("parked", true))
		} else if pending && next != "" {
			attrs = append(attrs, slog.String("next_attempt", next))
		} else {
			attrs = append(attrs, slog.String("outcome", "done"))
		}
		logline.Info(a.log, "attempt", attrs...)
	}
	for i := range at.rcpts {
		if r := &at.rcpts[i]; !r.logged {
			a.logOutcome(env, at.messageID, r, expired[r.index])
		}
	}
}

// parked reports whether the queue holds id parked (waiting for a slot).
func (a *Agent) parked(id string) bool {
	_, parked := a.q.Activity(id)
	return parked
}

// logOutcome writes the line of one recipient's outcome, and counts it.
// expired: a failure for the message's age.
func (a *Agent) logOutcome(env *queue.Envelope, messageID string, r *rcptResult, expired bool) {
	rc := env.Recipients[r.index]
	attrs := make([]slog.Attr, 0, 6)
	attrs = append(attrs, slog.String("queue_id", env.ID), slog.String("message_id", messageID), slog.String("rcpt", rc.Address))
	if r.reply != nil {
		attrs = append(attrs, slog.Int("code", r.reply.Code), slog.String("reply", replyText(r.reply)))
	}
	if r.remote != "" {
		attrs = append(attrs, slog.String("mx", r.remote))
	}
	switch {
	case r.state == queue.Delivered:
		a.stats.delivered.Add(1)
		if a.obs != nil {
			a.obs.Delivered(a.now().Sub(env.Arrived))
		}
		logline.Info(a.log, "delivered", attrs...)
	case r.state == queue.Failed && expired:
		a.stats.bounced.Add(1)
		logline.Info(a.log, "expired", attrs...)
	case r.state == queue.Failed:
		a.stats.bounced.Add(1)
		logline.Info(a.log, "bounced", attrs...)
	default:
		a.stats.deferred.Add(1)
		a.log.LogAttrs(context.Background(), slog.LevelDebug, "deferred", attrs...)
	}
}

func groupPending(g groupResult) bool {
	for _, r := range g.rcpts {
		if r.state == queue.Pending {
			return true
		}
	}
	return false
}
