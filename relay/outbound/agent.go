package outbound

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailhop/mailhop/internal/idn"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dsn"
	"github.com/mailhop/mailhop/relay/mailhdr"
	"github.com/mailhop/mailhop/relay/smtperr"
	"github.com/mailhop/mailhop/relay/tlsrpt"
)

// Options configures an Agent.
type Options struct {
	Config   *config.Config // required
	Queue    *queue.Queue   // required
	Resolver MXResolver     // required
	Logger   *slog.Logger   // nil: slog.Default()
	Now      func() time.Time
	// Dial opens connections; nil: a net.Dialer. Tests and proxies set it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Observer, when set, is told of every attempt and delivery (metrics).
	Observer Observer
	// MTASTS finds MTA-STS policies for MX delivery. Nil: when Resolver
	// has LookupTXT (as *dnsmx.Resolver does), a *mtasts.Fetcher over it,
	// caching in data_dir/mta-sts so policies survive restarts; otherwise
	// MTA-STS is not applied.
	MTASTS STSGetter
}

// Observer receives timings as they happen, for histograms. Its methods
// are called from delivery goroutines and must be quick.
type Observer interface {
	AttemptDone(dur time.Duration)        // one domain-group attempt ended
	Delivered(sinceArrival time.Duration) // one recipient delivered
}

// Agent is the delivery agent: it takes due messages from the queue and
// delivers them. Its methods are safe for concurrent use.
type Agent struct {
	q        *queue.Queue
	resolver MXResolver
	log      *slog.Logger
	now      func() time.Time
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)

	cfg      atomic.Pointer[config.Config]
	routes   atomic.Pointer[routeIDs] // of cfg's routes
	pool     *pool
	inflight *sem     // delivery.concurrency messages being delivered
	total    *sem     // delivery.concurrency connection slots
	domains  *limiter // delivery.per_domain_concurrency

	mu      sync.Mutex
	noTLS   map[netip.Addr]time.Time // STARTTLS handshake failed: plain until
	caPools map[string]*x509.CertPool
	dead    map[string]deadDest     // domains every host of which failed as a site
	doms    map[string]*domainState // domains with attempts under way

	stats    counters
	tlsStats tlsrpt.Stats
	tlsrpt   tlsReporter // TLS reports: SendTLSReports, tlsReportLoop

	sts    STSGetter    // nil: MTA-STS not applied
	stsOwn bool         // sts was made by New from the configuration
	tlsa   TLSAResolver // nil: no DANE

	abortCtx context.Context // deliveries run under it; Abort cancels it
	abort    context.CancelFunc
	obs      Observer

	// onRecord, when set (by tests), is called after each attempt is
	// recorded (requeued: false) or given back (requeued: true).
	onRecord func(id string, requeued bool)
}

// New returns an Agent; call Run to start delivering.
func New(opts Options) (*Agent, error) {
	if opts.Config == nil || opts.Queue == nil || opts.Resolver == nil {
		return nil, errors.New("outbound: Config, Queue and Resolver are required")
	}
	a := &Agent{
		q:        opts.Queue,
		resolver: opts.Resolver,
		log:      opts.Logger,
		now:      opts.Now,
		dial:     opts.Dial,
		obs:      opts.Observer,
		noTLS:    make(map[netip.Addr]time.Time),
		caPools:  make(map[string]*x509.CertPool),
		dead:     make(map[string]deadDest),
		doms:     make(map[string]*domainState),
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.tlsStats.Now = opts.Now
	a.tlsa, _ = opts.Resolver.(TLSAResolver)
	if a.now == nil {
		a.now = time.Now
	}
	a.tlsrpt.start = a.now()
	a.tlsrpt.reschedule = make(chan struct{}, 1)
	if a.dial == nil {
		d := net.Dialer{KeepAlive: -1} // idle connections are closed by idle_conn_timeout
		a.dial = d.DialContext
	}
	n, per := concurrency(opts.Config)
	a.abortCtx, a.abort = context.WithCancel(context.Background())
	a.inflight, a.total = newSem(n), newSem(n)
	a.pool = newPool(per)
	a.domains = newLimiter(per, func(key, id string) bool { return a.q.UnparkFor(id, key) })
	a.cfg.Store(opts.Config)
	a.routes.Store(newRouteIDs(opts.Config))
	a.loadTLSCounts() // after the configuration: its data_dir has the file
	a.q.SetRetryIntervals(opts.Config.RetryDurations())
	a.sts = opts.MTASTS
	if a.sts == nil {
		if txt, ok := opts.Resolver.(txtResolver); ok {
			a.sts, a.stsOwn = a.newSTSFetcher(opts.Config, txt), true
		}
	}
	return a, nil
}

// Abort cuts short the deliveries under way (after Run's context is done
// and the shutdown deadline has passed).
func (a *Agent) Abort() { a.abort() }

// concurrency returns delivery.concurrency and per_domain_concurrency.
func concurrency(cfg *config.Config) (total, perDomain int) {
	total, perDomain = cfg.Delivery.Concurrency, cfg.Delivery.PerDomainConcurrency
	if total <= 0 {
		total = 100
	}
	if perDomain <= 0 {
		perDomain = 10
	}
	return total, perDomain
}

// SetConfig switches to a reloaded configuration for the attempts that
// start afterwards: hostname, routes, TLS policies, ports, timeouts,
// max_recipients_per_transaction, ages,
// retry_intervals (from the next attempt's scheduling on), and the
// concurrency limits (deliveries under way above a lowered limit finish;
// no new one starts until the count is below it). What the agent was built
// with at start — the roots of MTA-STS fetches (extra_roots_file) — needs a
// restart; a change is logged as a warning. delivery.resolvers belong to the
// resolver (dnsmx.Resolver's SetServers) and data_dir to the process (the
// reload keeps the running one).
func (a *Agent) SetConfig(cfg *config.Config) {
	a.routes.Store(newRouteIDs(cfg))
	old := a.cfg.Swap(cfg)
	a.q.SetRetryIntervals(cfg.RetryDurations())
	n, per := concurrency(cfg)
	a.inflight.setMax(n)
	a.total.setMax(n)
	a.domains.setMax(per)
	a.pool.setMaxIdle(per)
	a.pool.closeStale(cfg)
	// Route ca_files and extra_roots_file are read again: a CA renewed in
	// the same file counts from the reload on.
	a.mu.Lock()
	a.caPools = make(map[string]*x509.CertPool)
	a.mu.Unlock()
	if old.Delivery.TLSReportInterval != cfg.Delivery.TLSReportInterval {
		select {
		case a.tlsrpt.reschedule <- struct{}{}:
		default: // already signalled
		}
	}
	var restart []string
	if a.stsOwn && old.Delivery.ExtraRootsFile != cfg.Delivery.ExtraRootsFile {
		restart = append(restart, "delivery.extra_roots_file (MTA-STS fetches)")
	}
	if len(restart) > 0 {
		a.log.Warn("reload: these delivery settings take effect only after a restart", "keys", strings.Join(restart, ", "))
	}
}

func (a *Agent) config() *config.Config { return a.cfg.Load() }

// Run delivers due messages until ctx is done, at most
// delivery.concurrency at a time. When ctx is done, Run takes no new
// message and waits for the attempts under way to finish — a delivery cut
// after the remote server accepted it would be sent again later — unless
// Abort is called, which cuts them short (their connections closed): a
// message that nothing was decided for is then given back with Requeue, any
// other has its outcome recorded with Done. Run returns nil after that, or
// the queue's error if Next fails for another reason. Meanwhile it sends
// TLS reports every delivery.tls_report_interval (see SendTLSReports), and
// every parkSweep unparks mail for a domain slot that freed unseen.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer a.pool.closeAll()
	defer wg.Wait()
	loops, stopLoops := context.WithCancel(ctx)
	defer stopLoops() // before wg.Wait, which waits for the loops too
	wg.Add(3)
	go func() {
		defer wg.Done()
		a.tlsReportLoop(loops)
	}()
	go func() {
		defer wg.Done()
		a.sweepParked(loops)
	}()
	go func() {
		defer wg.Done()
		a.housekeep(loops)
	}()
	dctx := a.abortCtx
	jobs := make(chan *queue.Envelope) // to workers waiting for another message
	for {
		if a.inflight.acquire(ctx) != nil {
			return nil
		}
		env, err := a.q.Next(ctx)
		if err != nil {
			a.inflight.release()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("outbound: %w", err)
		}
		select {
		case jobs <- env:
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.deliveryWorker(ctx, dctx, env, jobs)
			}()
		}
	}
}

// workerIdle is how long a delivery goroutine waits for another message
// before it exits.
const workerIdle = 10 * time.Second

// deliveryWorker processes env, then further messages from jobs until none
// comes for workerIdle or ctx ends. Each message frees its slot when done.
// Reusing goroutines saves growing a fresh stack to the depth of a
// delivery for every message.
func (a *Agent) deliveryWorker(ctx, dctx context.Context, env *queue.Envelope, jobs <-chan *queue.Envelope) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		a.process(dctx, env)
		a.inflight.release()
		idle.Reset(workerIdle)
		select {
		case env = <-jobs:
		case <-idle.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// process makes one delivery attempt of env and records it; or, when all
// its pending recipients are in one domain that has no free connection
// slot, parks it (see claimDomain).
func (a *Agent) process(ctx context.Context, env *queue.Envelope) {
	release, parked := a.claimDomain(ctx, env)
	if parked {
		return
	}
	if release != nil {
		defer release()
	}
	cfg := a.config()
	body, err := a.q.Body(env.ID)
	if err != nil {
		a.log.Error("cannot open body", "queue_id", env.ID, "err", err)
		a.record(env, cfg, &attempt{lastErr: "body: " + err.Error()}, nil)
		return
	}
	body = inMemory(body)
	defer body.Close()

	at := &attempt{}
	hdr := scanStored(body)
	n, msgID := hdr.received, hdr.messageID
	if n > mailhdr.MaxReceived {
		// RFC 5321 §6.3: a loop; bounce rather than circulate forever.
		e := smtperr.New(0, "5.4.6", "mail loop: %d Received header fields (more than %d)", n, mailhdr.MaxReceived)
		for i := range env.Recipients {
			if env.Recipients[i].State == queue.Pending {
				at.rcpts = append(at.rcpts, rcptResult{index: i, state: queue.Failed, reply: e})
			}
		}
	} else {
		at = a.deliverMessage(ctx, cfg, env, body, msgID, hdr.tlsOptional, release != nil)
	}
	at.messageID = msgID
	if ctx.Err() != nil {
		if domains, sent := at.dropCut(); len(domains) > 0 {
			attrs := at.ref(env).attrs("domains", strings.Join(domains, ","))
			if sent {
				attrs = append(attrs, "note", "the message may be delivered more than once")
			}
			a.log.Info("delivery cut short by the shutdown; tried again after the restart", attrs...)
		}
		if !at.decided() {
			if err := a.q.Requeue(env.ID); err != nil {
				a.log.Error("requeue failed", at.ref(env).attrs("err", err)...)
			}
			if a.onRecord != nil {
				a.onRecord(env.ID, true)
			}
			return
		}
	}
	a.record(env, cfg, at, body)
}

// attempt collects the outcome of one attempt of a message.
type attempt struct {
	rcpts     []rcptResult
	groups    []groupResult
	lastErr   string
	messageID string // for the log
}

// ref names env, the message of at, in the log.
func (at *attempt) ref(env *queue.Envelope) msgRef {
	return msgRef{queueID: env.ID, messageID: at.messageID}
}

// dropCut takes out of at the recipients that a shutdown left pending
// without a server's reply (the connection it closed, a slot or DNS answer
// it stopped waiting for), in the groups it cut short: they stay in the
// queue as they were before the attempt, their last reply not replaced by
// the closed connection's error. It returns the domains they are in, and
// sent when the shutdown came after the message's data went to a server.
func (at *attempt) dropCut() (domains []string, sent bool) {
	dropped := make(map[int]bool)
	for gi := range at.groups {
		g := &at.groups[gi]
		if !g.cut {
			continue
		}
		keep := g.rcpts[:0]
		for _, r := range g.rcpts {
			if r.state != queue.Pending || (r.reply != nil && r.reply.Code != 0) {
				keep = append(keep, r) // decided, or a server's reply stands
				continue
			}
			dropped[r.index] = true
			sent = sent || (r.broke != nil && r.broke.stage == "end of data")
		}
		if len(keep) < len(g.rcpts) {
			domains = append(domains, g.domain)
			g.dropped = true
		}
		g.rcpts = keep
	}
	if len(dropped) > 0 {
		at.rcpts = slices.DeleteFunc(at.rcpts, func(r rcptResult) bool { return dropped[r.index] })
	}
	return domains, sent
}

// cutShort reports whether dropCut took out recipients of at.
func (at *attempt) cutShort() bool {
	return slices.ContainsFunc(at.groups, func(g groupResult) bool { return g.dropped })
}

// decided reports whether any recipient reached a final state.
func (at *attempt) decided() bool {
	for _, r := range at.rcpts {
		if r.state != queue.Pending {
			return true
		}
	}
	return false
}

// groupResult is the outcome of one domain group.
type groupResult struct {
	domain string
	rcpts  []rcptResult
	mx     string // host that answered (or was last tried)
	addr   string
	tls    string // TLS version, "" for none
	policy string // TLS policy source of the last connection tried
	verif  bool   // its certificate was verified
	dur    time.Duration
	err    *smtperr.Error // when no host answered, or DNS failed
	// waiting: no connection slot to the domain was free, no server
	// tried (see limitedGroup).
	waiting bool
	// cut: the shutdown came before the group's attempt ended.
	cut bool
	// dropped: dropCut took out recipients the shutdown left pending.
	dropped bool
}

// parkAfter is how long a message waits for its domain's connection slot
// before it is parked.
const parkAfter = time.Second

// parkSweep is how often parked mail is looked at for a slot that frees
// without unparking it (see limiter.sweep).
const parkSweep = 5 * time.Second

// sweepParked runs the limiter's sweep every parkSweep until ctx is done.
func (a *Agent) sweepParked(ctx context.Context) {
	t := time.NewTicker(parkSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.domains.sweep()
		}
	}
}

// housekeepInterval is how often expired MTA-STS policies are deleted from
// the cache (data_dir/mta-sts) and expired entries from the memories of
// dead destinations and hosts without STARTTLS.
const housekeepInterval = time.Hour

// housekeep deletes what has expired, at the start and every
// housekeepInterval: the MTA-STS cache's policies, when the fetcher keeps
// one, and the entries of the dead and noTLS memories (capped too, but on
// a quiet relay expired entries would otherwise stay until looked up).
func (a *Agent) housekeep(ctx context.Context) {
	t := time.NewTicker(housekeepInterval)
	defer t.Stop()
	for {
		if p, ok := a.sts.(interface{ Prune() int }); ok {
			if n := p.Prune(); n > 0 {
				a.log.Info("mta-sts: expired policies deleted from the cache", "files", n)
			}
		}
		a.sweepMemories()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepMemories deletes the expired entries of the dead destinations and
// of the hosts remembered without STARTTLS.
func (a *Agent) sweepMemories() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	for k, d := range a.dead {
		if !now.Before(d.until) {
			delete(a.dead, k)
		}
	}
	for k, until := range a.noTLS {
		if !now.Before(until) {
			delete(a.noTLS, k)
		}
	}
}

// claimDomain takes the domain's connection slot for a message whose
// pending recipients are all in one domain. When the domain has none free
// within parkAfter (or has parked mail already), the message is parked in
// the queue until one frees, so that it does not hold one of the
// delivery.concurrency delivery slots meanwhile: with a slot taken by
// every message waiting for a stalled domain, mail to every other domain
// waited too. It returns (nil, false) for a message to
// several domains (they wait in limitedGroup) or to a dead destination
// (deferred at once there), and for one that could not be parked.
func (a *Agent) claimDomain(ctx context.Context, env *queue.Envelope) (release func(), parked bool) {
	d := ""
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.State != queue.Pending {
			continue
		}
		rd := idn.Key(r.Domain())
		if rd == "" || (d != "" && rd != d) {
			return nil, false
		}
		d = rd
	}
	if d == "" {
		return nil, false
	}
	cfg, now := a.config(), a.now()
	if a.deadErr(d) != nil {
		// A slot kept for it goes back: it is deferred instead. Its
		// deferral takes no slot, so no release would unpark the others
		// parked for it: they are all deferred now too.
		a.domains.dead(d, env.ID)
		return nil, false
	}
	// Under load a slot frees within milliseconds: wait for it here, as
	// cheap as waiting gets. Parking costs a round trip through the queue's
	// scheduler (about 15% of the relay's throughput when every message of
	// a busy domain went that way), so it is kept for a domain whose
	// slots stay taken (stalled or slow servers).
	if release, ok := a.domains.tryAcquire(d, env.ID); ok {
		return release, false
	}
	// A message due for its expiry or delay warning is not parked here:
	// its attempt records them (with a slot or not), as at any other time;
	// expired, it is parked by record for its final attempt. A
	// slot kept for it was taken above: skipped, it sat idle until
	// callWait while the message was deferred for want of one.
	if overdue(env, cfg, now) {
		return nil, false
	}
	release, err := a.domains.acquireWithin(ctx, d, parkAfter)
	if err == nil {
		return release, false
	}
	if ctx.Err() != nil {
		return nil, false // shutting down: the attempt is given back
	}
	// Parked, it is still handed out at its expiry or delay warning.
	until := retryBy(env, cfg, env.DelayWarned, now)
	release, ok := a.domains.acquireOrPark(d, env.ID, func() bool { return a.q.Park(env.ID, until) == nil })
	if ok {
		return release, false
	}
	// Not parked: the message was deleted meanwhile; nothing to record.
	return nil, true
}

// deliverMessage delivers every domain group of env's pending recipients
// in parallel. slotHeld: env has one domain, whose slot the caller holds.
// messageID is the message's Message-ID, for the log.
func (a *Agent) deliverMessage(ctx context.Context, cfg *config.Config, env *queue.Envelope, body queue.Body, messageID string, tlsOptional, slotHeld bool) *attempt {
	at := &attempt{}
	byDomain := make(map[string][]int)
	var order []string
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.State != queue.Pending {
			continue
		}
		// One group, and policy, per domain however written: everything about
		// a domain — routes, [[tls_policy]], MTA-STS, DANE, TLS reports, MX —
		// is looked up by its lower-case A-label form, so a domain written
		// in Unicode (u@müller.example, with SMTPUTF8) cannot lower TLS. A
		// name that is no valid IDN is lower-cased; its MX lookup then fails
		// for good.
		d := idn.Key(r.Domain())
		if d == "" {
			at.rcpts = append(at.rcpts, rcptResult{index: i, state: queue.Failed,
				reply: smtperr.New(0, "5.1.3", "recipient address has no domain")})
			continue
		}
		if _, ok := byDomain[d]; !ok {
			order = append(order, d)
		}
		byDomain[d] = append(byDomain[d], i)
	}
	groups := make([]groupResult, len(order))
	forms := &msgForms{body: body}
	progress := func(rs []rcptResult) { a.recordDelivered(cfg, env, body, messageID, rs) }
	if len(order) == 1 {
		// The common case: one domain, no goroutine to spare.
		groups[0] = a.limitedGroup(ctx, cfg, &txn{env: env, body: body, messageID: messageID, rcpts: byDomain[order[0]], tlsOptional: tlsOptional, forms: forms, progress: progress}, order[0], slotHeld)
		groups[0].cut = ctx.Err() != nil
	} else {
		var wg sync.WaitGroup
		var running atomic.Int32
		running.Store(int32(len(order)))
		for gi, d := range order {
			wg.Add(1)
			go func() {
				defer wg.Done()
				groups[gi] = a.limitedGroup(ctx, cfg, &txn{env: env, body: body, messageID: messageID, rcpts: byDomain[d], tlsOptional: tlsOptional, forms: forms, progress: progress}, d, false)
				groups[gi].cut = ctx.Err() != nil
				if running.Add(-1) > 0 {
					// Other domains may take minutes yet: what this
					// one delivered is recorded now, not sent again
					// should the process die before they end.
					a.recordDelivered(cfg, env, body, messageID, groups[gi].rcpts)
				}
			}()
		}
		wg.Wait()
	}
	for _, g := range groups {
		at.rcpts = append(at.rcpts, g.rcpts...)
	}
	at.groups = groups
	return at
}

// recordDelivered records the delivered recipients among rs before the
// attempt ends (queue.Progress). A recipient that asked for a success report
// (NOTIFY=SUCCESS) is recorded with its report in one commit, and marked
// reported so that the attempt's end does not report it again. Each one
// recorded is logged "delivered" then, and marked logged: a process killed
// before the attempt's end would log it never.
func (a *Agent) recordDelivered(cfg *config.Config, env *queue.Envelope, body queue.Body, messageID string, rs []rcptResult) {
	var us []queue.RcptUpdate
	var success []dsn.Outcome
	var reported []int // positions in rs of the recipients in success
	for i := range rs {
		r := &rs[i]
		if r.state != queue.Delivered || r.logged {
			continue // not delivered, or recorded already (between transactions)
		}
		if rc := &env.Recipients[r.index]; successReport(env, rc, r) {
			success = append(success, dsn.Outcome{Rcpt: rc, Action: "relayed", Reply: r.reply, Remote: r.remote})
			reported = append(reported, i)
		}
		us = append(us, r.update())
	}
	if len(us) == 0 {
		return
	}
	var rep *report
	if len(success) > 0 {
		var err error
		if rep, err = a.buildReport(env, body, cfg.Hostname, success, a.now()); err != nil {
			// At the attempt's end it is built again, with its outcome.
			a.log.Warn("cannot build success report before the attempt's end", msgRef{queueID: env.ID, messageID: messageID}.attrs("err", err)...)
			us = slices.DeleteFunc(us, func(u queue.RcptUpdate) bool {
				return env.Recipients[u.Index].Notify.Has(queue.NotifySuccess)
			})
			rep, reported = nil, nil
		}
	}
	var reps []queue.Report
	if rep != nil {
		reps = queueReports([]*report{rep})
	}
	if err := a.q.ProgressWithReports(env.ID, us, reps); err != nil {
		if !errors.Is(err, queue.ErrNotFound) {
			a.log.Warn("recording delivered recipients before the attempt's end failed; they are recorded at its end", msgRef{queueID: env.ID, messageID: messageID}.attrs("err", err)...)
		}
		return
	}
	for _, i := range reported {
		rs[i].reported = true
	}
	recorded := make(map[int]bool, len(us))
	for _, u := range us {
		recorded[u.Index] = true
	}
	for i := range rs {
		if r := &rs[i]; r.state == queue.Delivered && !r.logged && recorded[r.index] {
			a.logOutcome(env, messageID, r, false)
			r.logged = true
		}
	}
	if rep != nil {
		a.logReport(msgRef{queueID: env.ID, messageID: messageID}, env, rep)
	}
}

// limitedGroup runs deliverGroup within the concurrency limits, unless
// the domain is a dead destination: then its recipients are deferred at
// once. slotHeld: the caller holds the domain's slot. Without it (a message
// to several domains, which cannot be parked for one), the domain's slot is
// waited for as long as a single-domain message waits before it parks
// (parkAfter, not at all when the domain has parked mail); then its
// recipients are deferred: waiting on, the message held its delivery slot,
// and messages to a stalled domain and another took every delivery slot.
func (a *Agent) limitedGroup(ctx context.Context, cfg *config.Config, t *txn, domain string, slotHeld bool) groupResult {
	var err error
	if !slotHeld {
		if e := a.deadErr(domain); e != nil {
			// Called back for a slot of it (parked by record), as in
			// claimDomain.
			a.domains.dead(domain, t.env.ID)
			return a.suspended(t, domain, e)
		}
		// The slot kept for the message when it was unparked for one.
		release, ok := a.domains.tryAcquire(domain, t.env.ID)
		if !ok {
			release, err = a.domains.acquireWithin(ctx, domain, parkAfter)
		}
		if err == nil {
			defer release()
		} else if errors.Is(err, errWaitedTooLong) {
			e := smtperr.New(0, slotWaitEnhanced, slotWaitPrefix+"%s free (delivery.per_domain_concurrency); tried again later", domain)
			return groupResult{domain: domain, err: e, rcpts: allPending(t.rcpts, e), waiting: true}
		}
	}
	if err == nil {
		if e := a.deadErr(domain); e != nil { // found dead while waiting
			return a.suspended(t, domain, e)
		}
		if err = a.total.acquire(ctx); err == nil {
			defer a.total.release()
		}
	}
	if err != nil {
		e := smtperr.New(0, "4.3.2", "delivery interrupted: %v", err)
		return groupResult{domain: domain, err: e, rcpts: allPending(t.rcpts, e)}
	}
	return a.deliverGroup(ctx, cfg, t, domain)
}

func allPending(idx []int, e *smtperr.Error) []rcptResult {
	out := make([]rcptResult, len(idx))
	for i, x := range idx {
		out[i] = rcptResult{index: x, state: queue.Pending, reply: e}
	}
	return out
}

// deliverGroup delivers one message to the recipients of one domain: the
// domain's hosts in order, each address in turn, until one answers.
func (a *Agent) deliverGroup(ctx context.Context, cfg *config.Config, t *txn, domain string) (gr groupResult) {
	start := time.Now()
	gr.domain = domain
	defer func() {
		gr.dur = time.Since(start)
		a.stats.attempts.Add(1)
		a.stats.attemptNanos.Add(int64(gr.dur))
		if a.obs != nil {
			a.obs.AttemptDone(gr.dur)
		}
	}()
	dest := a.destination(cfg, domain) // what the dead rule knows it by
	mark, end := a.attemptStart(dest)  // see markDead
	defer end()
	targets, err := a.targets(ctx, cfg, domain)
	if err != nil {
		e := dnsFailure(err)
		st := queue.Pending
		if !e.Temporary() {
			st = queue.Failed
		} else if ctx.Err() == nil {
			// No answer about the domain (a timeout, SERVFAIL): its other
			// mail would each wait for the same lookup in turn, holding a
			// connection slot; Postfix suspends such a destination too
			// ("Host or domain name not found ... try again").
			a.markDead(dest, domain, e, mark, false)
		}
		gr.err = e
		for _, x := range t.rcpts {
			gr.rcpts = append(gr.rcpts, rcptResult{index: x, state: st, reply: e})
		}
		return gr
	}
	routed := len(targets) > 0 && targets[0].route != nil
	dt, perr := a.domainPolicy(ctx, cfg, domain, routed, t.env.RequireTLS, t.tlsOptional, t.ref())
	if perr != nil {
		gr.err = perr
		for _, x := range t.rcpts {
			gr.rcpts = append(gr.rcpts, rcptResult{index: x, state: queue.Failed, reply: perr})
		}
		return gr
	}
	tm := timeouts(cfg)
	last := smtperr.New(0, "4.4.4", "no host to deliver to")
	// policyOnly stays true while every host failed for want of the TLS
	// the policy (or REQUIRETLS) demands.
	policyOnly, tried := true, 0
	// site stays true while every host failed as a site (no connection,
	// no greeting, a 421, a timeout or a dropped connection, before or
	// after the greeting), not for a TLS policy or this message's
	// REQUIRETLS: then the domain is dead. timedOut: one of them waited
	// out a timeout in a session its server greeted (see markDead).
	site, timedOut := true, false
	// settled holds the outcomes that stand from hosts that passed other
	// recipients on to the next address (see passOn); carried holds the
	// results of the last such host for the recipients it passed on, their
	// outcome when no later host answers at all, and carrier that host as
	// the attempt line names it. sessions counts the hosts a transaction
	// ran with.
	var settled, carried []rcptResult
	var carrier groupResult
	sessions := 0
hosts:
	for i := range targets {
		tg := &targets[i]
		if tg.addrs != nil && len(tg.addrs) == 0 {
			continue // an MX host without addresses: nothing to try
		}
		// No connection to this host yet: nothing of the previous one's
		// address and TLS is left to be logged with its name.
		gr.mx, gr.addr, gr.tls, gr.verif = tg.host, "", "", false
		plan, serr := a.plan(ctx, cfg, dt, tg, t.ref())
		if serr != nil {
			tried++
			last, policyOnly, site = serr.err, policyOnly && serr.policy, false
			gr.policy = planFailureSource(dt, serr)
			a.logPolicyFailure(t.ref(), domain, tg.host, "", dt, nil, serr)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		gr.policy = plan.source
		if tg.addrs == nil {
			addrs, err := a.resolver.LookupHost(ctx, tg.host)
			if err != nil {
				// A smarthost that does not resolve is a configuration
				// or DNS problem: try the next, never bounce.
				last = &smtperr.Error{Enhanced: "4.4.3", Msg: err.Error()}
				policyOnly, site = false, false
				continue
			}
			tg.addrs = addrs
		}
		for _, ip := range tg.addrs {
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(tg.port))
			gr.mx, gr.addr, gr.tls = tg.host, ap.String(), ""
			res, info, serr := a.tryAddr(ctx, cfg, tg, plan, ap, t, tm, domain, dest)
			gr.tls, gr.policy, gr.verif = info.version, info.policy, info.verified
			if serr == nil {
				sessions++
				again, decided, passed := passOn(res)
				b := brokeOf(passed)
				var named *smtperr.Error // b's error, naming the host
				if b != nil && b.err.Code == 0 {
					// Their reply says which host and stage the
					// connection failed at, as a failed connection's does.
					named = hostNamed(tg.host, ap, b.err)
					for i := range passed {
						if passed[i].broke != nil {
							passed[i].reply = named
						}
					}
					for i := range res {
						if res[i].broke != nil {
							res[i].reply = named
						}
					}
				}
				if named != nil && info.fresh {
					// The session its server greeted timed out or lost its
					// connection, no reply, in its first transaction: the
					// host failed as a site, as Postfix throttles a
					// destination after "conversation with X timed out
					// while ..." or "lost connection with X while ...".
					// Not a session that carried mail before (reused from
					// the pool): one going stale says nothing of the
					// server; nor one whose host replied 421 or deferred
					// with a 4xx reply.
					timedOut = timedOut || b.timeout
				} else {
					site = false
				}
				policyOnly = false
				if len(again) == 0 || sessions >= maxSessions || ctx.Err() != nil {
					gr.rcpts = append(res, settled...)
					if len(again) > 0 && site && ctx.Err() == nil {
						a.markDead(dest, domain, named, mark, timedOut)
					}
					return gr
				}
				// As Postfix does for any server but the last, the
				// recipients this one deferred, or left when its connection
				// failed mid-transaction, go on to the next address now.
				// Those it delivered are recorded first: the next host's
				// transactions may take minutes, and a crash meanwhile
				// must not send the message to them again.
				if t.progress != nil {
					t.progress(decided)
				}
				settled, carried = append(settled, decided...), passed
				carrier = gr
				rest := *t
				rest.rcpts = again
				t = &rest
				tried++
				// The attempt line names a later host: the TLS of this
				// session, where recipients may have been delivered or
				// refused, is logged here.
				attrs := t.ref().attrs("domain", domain, "mx", tg.host, "addr", ap.String(),
					"tls", info.version, "tls_policy", info.policy, "tls_verified", info.verified)
				if b != nil {
					last = b.err
					if named != nil {
						last = named // what they keep if no later host answers
					}
					attrs = append(attrs, "stage", b.stage, "err", b.err.Error())
					if b.stage == "end of data" && b.err.Code == 0 {
						attrs = append(attrs, "note", "the message may be delivered more than once")
					}
					a.log.Info("host failed", attrs...)
				} else {
					last = passed[0].reply
					a.log.Info("host deferred", append(attrs, "rcpts", len(again), "reply", last.Error())...)
				}
				continue
			}
			if serr.loop && tg.route == nil && tg.pref > targets[0].pref {
				// This relay is a backup MX of the domain: RFC 5321 §5.1
				// leaves out the hosts from its own preference on, so the
				// mail waits for a more preferred host, as with Postfix.
				a.log.Info("this relay is a backup MX; waiting for a more preferred host", t.ref().attrs(
					"domain", domain, "mx", tg.host, "addr", ap.String(), "pref", tg.pref)...)
				break hosts
			}
			if carried != nil && ctx.Err() != nil {
				// A shutdown cut this host short: the replies of the
				// last host to answer stand, not the closed connection.
				break hosts
			}
			carried = nil // this host's error is the news now
			if serr.loop {
				le, final := a.loopBack(t.ref(), domain, tg, ap.String(), serr)
				if final {
					gr.err = le
					for _, x := range t.rcpts {
						gr.rcpts = append(gr.rcpts, rcptResult{index: x, state: queue.Failed, reply: le, remote: tg.host})
					}
					gr.rcpts = append(gr.rcpts, settled...)
					return gr
				}
				serr.err = le
			}
			tried++
			last, policyOnly = serr.err, policyOnly && serr.policy
			site = site && !serr.policy && !serr.loop
			// Only a session its server greeted counts as having waited
			// out a timeout (see markDead): greeted sessions under way are
			// what a stalled one must not be kept alive by, and a
			// connection or greeting that timed out says nothing of them.
			timedOut = timedOut || serr.timeout && info.greeted
			switch {
			case last.Code == 0 && !serr.policy:
				last = hostNamed(tg.host, ap, last)
			case last.Code >= 500 && !serr.policy:
				// The server refused the session (554 greeting, 5xx to
				// EHLO): the mail is deferred below with 4.4.1, so the
				// text keeps the host and its whole reply, as Postfix's
				// "refused to talk to me: 554 5.7.1 ..." does.
				last = &smtperr.Error{Enhanced: "4.4.1", Msg: fmt.Sprintf("%s[%s]:%d refused the session (%s): %s",
					tg.host, ap.Addr(), ap.Port(), serr.stage, last.Error())}
			}
			if serr.policy {
				a.logPolicyFailure(t.ref(), domain, tg.host, ap.String(), dt, plan, serr)
			} else if ctx.Err() == nil {
				// Each failed host has its line, as Postfix logs "connect
				// to mx1.example.com[192.0.2.1]:25: Connection refused":
				// the attempt's line names only the host it ended with.
				// One the shutdown cut short did not fail: see dropCut.
				a.log.Info("host failed", t.ref().attrs("domain", domain, "mx", tg.host, "addr", ap.String(), "stage", serr.stage, "err", serr.err.Error())...)
			}
			if ctx.Err() != nil {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	if t.env.RequireTLS && policyOnly && tried > 0 && ctx.Err() == nil {
		// RFC 8689 §4.2.1: no host could take it with verified TLS and
		// REQUIRETLS: return it to the sender.
		e := &smtperr.Error{Enhanced: "5.7.30", Msg: "REQUIRETLS: no host of " + domain +
			" accepted the message over verified TLS with REQUIRETLS; last: " + last.Error()}
		gr.err = e
		for _, x := range t.rcpts {
			gr.rcpts = append(gr.rcpts, rcptResult{index: x, state: queue.Failed, reply: e, remote: gr.mx})
		}
		gr.rcpts = append(gr.rcpts, settled...)
		return gr
	}
	// No host answered: whatever the last reply, try again later.
	e := *last
	if !e.Temporary() {
		e = smtperr.Error{Enhanced: "4.4.1", Msg: last.Msg} // its own codes would read as a second status
	}
	if carried != nil {
		// The last host to answer deferred them: its replies stand, and
		// the attempt line names it, not a later host that was skipped
		// (TLS policy, a backup MX that is this relay) or cut short.
		gr.mx, gr.addr, gr.tls, gr.policy, gr.verif = carrier.mx, carrier.addr, carrier.tls, carrier.policy, carrier.verif
		gr.rcpts = append(carried, settled...)
		if site && ctx.Err() == nil {
			// Its session failed as a site (above), and any later host too.
			a.markDead(dest, domain, &e, mark, timedOut)
		}
		return gr
	}
	gr.err = &e
	gr.rcpts = append(allPending(t.rcpts, &e), settled...)
	if site && tried > 0 && ctx.Err() == nil {
		a.markDead(dest, domain, &e, mark, timedOut)
	}
	return gr
}

// hostNamed says which host an error without a reply came from
// ("mx.example.com[192.0.2.1]:25: connection refused").
func hostNamed(host string, ap netip.AddrPort, e *smtperr.Error) *smtperr.Error {
	named := *e
	named.Msg = fmt.Sprintf("%s[%s]:%d: %s", host, ap.Addr(), ap.Port(), e.Msg)
	return &named
}

// maxSessions is how many hosts an attempt runs a transaction with, as
// Postfix's smtp_mx_session_limit: a domain whose every MX defers a
// recipient costs two sessions per attempt, not one per MX.
const maxSessions = 2

// passOn splits a host's results into those that stand and the recipients
// to try at the next address now: those the host deferred with a 4xx
// reply (except "too many recipients", tooMany, which waits for a later
// transaction), and those left when its connection failed after
// accepting them (broke). passed are the host's results for the latter.
func passOn(res []rcptResult) (again []int, decided, passed []rcptResult) {
	for _, r := range res {
		soft := r.state == queue.Pending && r.reply != nil && r.reply.Code >= 400 && r.reply.Code < 500 && !r.tooMany
		if r.broke != nil || soft {
			again, passed = append(again, r.index), append(passed, r)
		} else {
			decided = append(decided, r)
		}
	}
	return again, decided, passed
}

// brokeOf returns how the connection failed for the recipients in rs that
// it left (broke), nil when none: a host may both defer some recipients at
// RCPT and break off the transaction of the others, in any order.
func brokeOf(rs []rcptResult) *stageError {
	for _, r := range rs {
		if r.broke != nil {
			return r.broke
		}
	}
	return nil
}

// loopBack decides what a host that turned out to be this relay means
// (RFC 5321 §5.1). An MX host: the domain's mail would come straight
// back, so its recipients fail now with 5.4.6, as Postfix bounces "mail
// for DOMAIN loops back to myself" (final). A smarthost of a [[route]]:
// a configuration mistake, not the sender's; the host is skipped and,
// when no other takes the mail, it stays queued with 4.4.6 until the
// configuration is fixed.
func (a *Agent) loopBack(ref msgRef, domain string, tg *target, addr string, se *stageError) (*smtperr.Error, bool) {
	if tg.route != nil {
		a.log.Error("smarthost loops back to myself; check the [[route]] for this domain", ref.attrs(
			"domain", domain, "mx", tg.host, "addr", addr, "err", se.err.Msg)...)
		return smtperr.New(0, "4.4.6", "smarthost %s loops back to myself (%s)", tg.host, se.err.Msg), false
	}
	a.log.Warn("mail loops back to myself", ref.attrs("domain", domain, "mx", tg.host, "addr", addr, "err", se.err.Msg)...)
	return smtperr.New(0, "5.4.6", "mail for %s loops back to myself (%s)", domain, se.err.Msg), true
}

// connInfo is what an attempt learnt about a connection's TLS, for logs.
type connInfo struct {
	version  string // "" for plain text
	policy   string // the plan's source
	verified bool
	// fresh: the transaction ran on a connection set up for it, not one
	// reused from the pool (which carried mail before).
	fresh bool
	// greeted: the server of the connection greeted (a failure came after
	// the greeting, not at the connect or while waiting for it).
	greeted bool
}

// tryAddr delivers t through one address under plan: a pooled connection
// if there is one (redialling once when it turns out dead), else a new one.
// dest is the destination of mail to domain (see destination).
func (a *Agent) tryAddr(ctx context.Context, cfg *config.Config, tg *target, plan *tlsPlan, ap netip.AddrPort, t *txn, tm stageTimeouts, domain, dest string) ([]rcptResult, connInfo, *stageError) {
	if plan.wantsTLS() && !plan.required && a.knownNoTLS(ap.Addr()) {
		p := *plan
		p.plain = true
		plan = &p
	}
	info := connInfo{policy: plan.source}
	// From its server's greeting to the end, the session keeps dest
	// alive (see markDead). greetedNow: the server of the connection being
	// set up greeted.
	var down func()
	greetedNow := false
	greeted := func() {
		greetedNow = true
		if down == nil {
			down = a.sessionUp(dest)
		}
	}
	defer func() {
		if down != nil {
			down()
		}
	}()
	cn := a.pool.get(connKey{addr: ap.String(), host: tg.host, mode: plan.key(), route: a.routeID(cfg, tg.route), cfg: cfg})
	for {
		if cn == nil {
			// delivery.concurrency counts connections, idle ones too:
			// every slot not taken may hold one idle connection, the
			// rest are closed before this one is opened.
			a.pool.trim(a.total.free())
			greetedNow = false
			c, err := a.dialConn(ctx, cfg, tg, ap, plan, t.ref(), greeted)
			if err != nil {
				se := err.(*stageError)
				if se.tls && plan.wantsTLS() && !plan.required && ctx.Err() == nil {
					// RFC 7435: opportunistic TLS must not make mail
					// undeliverable; retry in plain text and remember.
					a.log.Info("STARTTLS failed; retrying without TLS", t.ref().attrs("domain", domain, "mx", tg.host, "addr", ap.String(), "err", se.err.Error())...)
					a.rememberNoTLS(ap.Addr())
					p := *plan
					p.plain = true
					plan = &p
					continue
				}
				info.version, info.verified, info.greeted = se.tlsVer, se.verified, greetedNow
				return nil, info, se
			}
			cn = c
		}
		info = connInfo{version: cn.tlsVer, policy: plan.source, verified: cn.verified, fresh: !cn.reused, greeted: true}
		greeted()
		// Each transaction its server answers shows the domain works (see
		// markDead): a session that stalls in a later one is no site failure.
		res, broken, serr := a.transactions(ctx, cn, t, tm, rcptLimit(cfg), dest)
		if serr != nil {
			cn.end()
			if cn.reused && ctx.Err() == nil {
				// A stale pooled connection, or one on which the server
				// takes no more transactions: dial afresh.
				cn = nil
				continue
			}
			return nil, info, serr
		}
		switch {
		case broken:
			cn.end()
		case cn.exhausted(), allDeferred(res), cn.key.cfg != a.config(), a.now().Sub(cn.born) >= connReuseLimit:
			// Not kept for reuse: a session on which the server takes no
			// more transactions; a server that took nothing and
			// deferred every recipient may be turning this session away,
			// as postscreen does once its tests pass ("450 4.3.2 Service
			// currently unavailable" until the client connects again);
			// a session set up before a reload has the old settings; and
			// one is reused for connReuseLimit at most.
			go quit(cn)
		default:
			cn.reused, cn.dest = false, dest
			a.pool.put(cn, tm.idle)
		}
		return res, info, nil
	}
}

// recordProgress hands t.progress (when set) those of res at positions ps
// that were delivered and not recorded yet, and keeps what it noted of them.
func recordProgress(t *txn, res []rcptResult, ps []int) {
	if t.progress == nil {
		return
	}
	var rs []rcptResult
	var at []int // positions in res of rs
	for _, p := range ps {
		if res[p].state == queue.Delivered && !res[p].logged {
			rs, at = append(rs, res[p]), append(at, p)
		}
	}
	if len(rs) == 0 {
		return
	}
	t.progress(rs)
	for i, p := range at {
		res[p] = rs[i]
	}
}

// allTooMany reports whether the server refused every recipient of res for
// the number of recipients (rcptResult.tooMany, see limitRefusal).
func allTooMany(res []rcptResult) bool {
	for _, r := range res {
		if r.state != queue.Pending || !r.tooMany {
			return false
		}
	}
	return len(res) > 0
}

// answeredAll reports whether the server replied to the transaction of
// res for every recipient: none was left without a reply by a connection
// that failed (broke), and a reply came (not only decisions of ours before
// MAIL, such as a message too large for the server's SIZE).
func answeredAll(res []rcptResult) bool {
	replied := false
	for _, r := range res {
		if r.broke != nil {
			return false
		}
		replied = replied || r.reply != nil && r.reply.Code != 0
	}
	return replied
}

// connReuseLimit is how long after it was set up a connection is still
// put back for reuse (Postfix's smtp_connection_reuse_time_limit): one in
// steady use never reaches its idle timeout, and without a limit it stayed
// open for good, with whatever the server decided at its start (its
// address's DNS, a postscreen verdict, a load balancer's choice).
const connReuseLimit = 300 * time.Second

// allDeferred reports whether every recipient of res got a temporary
// reply from the server (none delivered, refused for good or cut off).
func allDeferred(res []rcptResult) bool {
	for _, r := range res {
		if r.state != queue.Pending || r.broke != nil || r.reply == nil || r.reply.Code < 400 || r.reply.Code >= 500 {
			return false
		}
	}
	return len(res) > 0
}

// rcptLimit is delivery.max_recipients_per_transaction, or its default
// when unset (a Config built in code).
func rcptLimit(cfg *config.Config) int {
	if n := cfg.Delivery.MaxRecipientsPerTransaction; n > 0 {
		return n
	}
	return config.DefaultMaxRecipientsPerTransaction
}

// transactions delivers t over cn in as many SMTP transactions as it takes,
// one after another on the connection, each with its own MAIL (and RSET
// first where transact needs one):
//
//   - Each carries at most limit recipients
//     (delivery.max_recipients_per_transaction, Postfix's
//     smtp_destination_recipient_limit): RFC 5321 §4.5.3.1.8 only promises
//     that a server takes 100, and some answer a bigger transaction with a
//     refusal of it all rather than a 452 per recipient beyond their limit.
//     Postfix makes such a message several deliveries; here they share the
//     connection, so per_domain_concurrency counts one. A server that
//     announces a lower LIMITS RCPTMAX (RFC 9422) gets that many.
//   - The recipients a server refused because a transaction had too many
//     (limitRefusal; RFC 5321 §4.5.3.1.10: the client sends to the
//     accepted ones and tries the rest in a later transaction) go in the
//     next transactions, before those not sent yet. From then on each
//     transaction carries no more recipients than the last one got
//     through, the server's limit as far as it showed it: sent all of the
//     rest each time, 200 recipients to a server that takes one per
//     transaction cost 20,100 RCPT commands. When a transaction gets none
//     through, the rest wait for the next attempt with its reply.
//
// The first transaction's *stageError (nothing decided; the caller may
// dial afresh or try the next address) is returned as transact's. When the
// connection fails or breaks off after a transaction, what the earlier
// transactions decided stands, and the recipients no transaction was run
// for, or that were refused as too many and waited for a further one, are
// left pending as broken off with it (broke: the next address of
// the attempt may take them, as it may the recipients a broken transaction
// had accepted); when the attempt is cut short by the shutdown, they are
// left pending without a reply (see dropCut). Each transaction whose every
// recipient got the server's reply (answeredAll) is noted for dest, the
// destination, with a.answered.
// It reports whether cn must not be reused.
func (a *Agent) transactions(ctx context.Context, cn *conn, t *txn, tm stageTimeouts, limit int, dest string) ([]rcptResult, bool, *stageError) {
	if cn.rcptMax > 0 {
		limit = min(limit, cn.rcptMax) // the server said so: no 452 to learn it from
	}
	reused := cn.reused
	size := min(limit, len(t.rcpts))
	part := func(ps []int) *txn {
		p := *t
		p.rcpts = make([]int, len(ps))
		for i, x := range ps {
			p.rcpts[i] = t.rcpts[x]
		}
		return &p
	}
	last := make([]int, size) // positions in t.rcpts (and res) of the last transaction's recipients
	for i := range last {
		last[i] = i
	}
	sub := t // the common case: one transaction for them all, nothing copied
	if size < len(t.rcpts) {
		sub = part(last)
	}
	res, broken, serr := a.transact(ctx, cn, sub, tm)
	if serr != nil {
		return nil, true, serr
	}
	if reused && allTooMany(res) {
		// Every recipient refused for too many on a connection from the
		// pool: the session takes no more (Oracle Messaging Server past
		// its transactions per session, with TRANSACTION_LIMIT_RCPT_TO),
		// nothing was decided, and the caller dials afresh.
		cn.spent = true
		return nil, true, &stageError{stage: "rcpt", err: res[0].reply}
	}
	if answeredAll(res) {
		a.answered(dest)
	}
	if size < len(t.rcpts) {
		res = append(res, make([]rcptResult, len(t.rcpts)-size)...)
	}
	sent := size // res[sent:] have had no transaction
	tooMany := func(r rcptResult) bool { return r.state == queue.Pending && r.tooMany }
	var cause *stageError   // why the connection carries no more transactions
	var limited *rcptResult // the last "too many recipients" refusal, when a transaction got none through
	for {
		took, refused := 0, -1
		for _, p := range last {
			if tooMany(res[p]) {
				refused = p
			} else {
				took++
			}
		}
		if refused >= 0 {
			size = min(size, took)
		}
		if broken || ctx.Err() != nil {
			break
		}
		if size == 0 && refused >= 0 {
			limited = &res[refused]
			// After a transaction it took recipients in, the session
			// takes none: it is not kept for the next message.
			cn.spent = cn.spent || cn.txns > 1
			break
		}
		var next []int
		for p := range res[:sent] {
			if len(next) < size && tooMany(res[p]) {
				next = append(next, p)
			}
		}
		before := sent
		for ; sent < len(res) && len(next) < size; sent++ {
			next = append(next, sent)
		}
		if len(next) == 0 {
			return res, false, nil
		}
		if cn.mailMax > 0 && cn.txns >= cn.mailMax {
			// RFC 9422 §4.1: the server takes no more transactions in this
			// session (it would refuse the next MAIL). The recipients left
			// wait for the next attempt, as those of a server that takes
			// no more recipients do, and the connection is not kept.
			cn.spent = true
			sent = before
			limited = &rcptResult{reply: smtperr.New(0, "4.5.3", "%s takes at most %d transactions per connection (LIMITS MAILMAX)", cn.host, cn.mailMax)}
			break
		}
		// Delivered now, recorded now: a crash in a later transaction (a
		// big message to a slow server takes minutes each) does not send
		// the message to them again.
		recordProgress(t, res, last)
		more, br, serr := a.transact(ctx, cn, part(next), tm)
		if serr != nil {
			// Nothing decided in it: those refused as too many before keep
			// that reply, those it was to carry first had none.
			sent, broken, cause = before, true, serr
			break
		}
		if answeredAll(more) {
			a.answered(dest)
		}
		for i, p := range next {
			res[p] = more[i]
		}
		broken, last = br, next
	}
	switch {
	case limited != nil:
		// The server takes no more on this connection: they wait for the
		// next attempt as those it refused do.
		for p := sent; p < len(res); p++ {
			res[p] = rcptResult{index: t.rcpts[p], state: queue.Pending, reply: limited.reply, remote: cn.host, tooMany: true}
		}
		return res, broken, nil
	case ctx.Err() != nil:
		if sent == len(res) {
			return res, broken, nil
		}
		cause = &stageError{stage: "mail", err: smtperr.New(0, "4.3.2", "delivery interrupted before the transaction for this recipient")}
	default:
		// The connection carries no more transactions.
		if cause == nil {
			if cause = brokeOf(res[:sent]); cause == nil {
				// The last transaction left the session unfit for more (a
				// protocol error, an early reply with the connection closed).
				cause = &stageError{stage: "mail", err: smtperr.New(0, "4.4.2", "connection given up after the transaction before this recipient's")}
			}
		}
		// Those refused as too many were waiting for a further
		// transaction here: they go on with those that had none.
		for p := range res[:sent] {
			if tooMany(res[p]) {
				res[p] = rcptResult{index: t.rcpts[p], state: queue.Pending, reply: cause.err, remote: cn.host, broke: cause}
			}
		}
	}
	for p := sent; p < len(res); p++ {
		res[p] = rcptResult{index: t.rcpts[p], state: queue.Pending, reply: cause.err, remote: cn.host, broke: cause}
	}
	return res, true, nil
}

// planFailureSource names the policy that refused a host before any
// connection (what the attempt line's tls_policy says): DANE for a TLSA
// lookup that failed, MTA-STS for a host outside an enforced policy.
func planFailureSource(dt *domainTLS, se *stageError) string {
	switch {
	case se.stage == "tlsa":
		return srcDANE
	case dt.sts != nil:
		return srcMTASTS
	}
	return dt.level
}

// logPolicyFailure logs why a host was skipped for the TLS policy (or
// could not be asked: a TLSA lookup failed).
func (a *Agent) logPolicyFailure(ref msgRef, domain, mx, addr string, dt *domainTLS, p *tlsPlan, se *stageError) {
	attrs := ref.attrs("domain", domain, "mx", mx)
	if addr != "" {
		attrs = append(attrs, "addr", addr)
	}
	if p != nil {
		attrs = append(attrs, "tls_policy", p.source)
	} else if src := planFailureSource(dt, se); src != "" {
		attrs = append(attrs, "tls_policy", src)
	}
	if dt.requireTLS {
		attrs = append(attrs, "requiretls", true)
	}
	attrs = append(attrs, "stage", se.stage, "err", se.err.Error())
	a.log.Warn("TLS policy not met; host skipped", attrs...)
}
