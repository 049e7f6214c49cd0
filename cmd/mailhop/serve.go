package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/internal/earlysignal"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/inbound"
	"github.com/mailhop/mailhop/relay/metrics"
	"github.com/mailhop/mailhop/relay/outbound"
)

// shutdownGrace is how long SMTP transactions and deliveries may take to
// finish after SIGTERM when limits.shutdown_timeout is not set.
const shutdownGrace = 30 * time.Second

// pickupInterval is how often the pickup directory is looked at after the
// start, for files sendmail wrote while the relay was starting.
const pickupInterval = 30 * time.Second

// setLogLevel sets lv from a validated [log] level.
func setLogLevel(lv *slog.LevelVar, name string) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(name))
	lv.Set(level)
}

// newLogger builds the slog logger the [log] section asks for, with its
// level in a LevelVar that a reload can set.
func newLogger(c config.Log, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	setLogLevel(lv, c.Level)
	opts := &slog.HandlerOptions{Level: lv}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}

func cmdServe(args []string, stderr io.Writer) int {
	// Signals are caught from the first moment (earlysignal's init, before
	// the configuration is read): a SIGTERM while the relay starts (its
	// ports may already accept) still means a clean stop, once the start
	// is complete. They stay caught until the process exits: a SIGHUP (a
	// log rotation's reload) or a second SIGTERM after the stop would
	// otherwise kill the process on its way out, and a clean stop would
	// end with 129 or 143.
	sigs := earlysignal.Serve()
	cfg, path, code := configCommand("serve", args, stderr)
	if code != exitOK {
		return max(code, exitOK)
	}
	log, level := newLogger(cfg.Log, stderr)
	warnConfig(cfg, path, log)
	tuneRuntime()
	if p := os.Getenv("MAILHOP_CPUPROFILE"); p != "" {
		// For profiling load runs: a CPU profile of the whole run.
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if p := os.Getenv("MAILHOP_MEMPROFILE"); p != "" {
		// For profiling load runs: where the run allocated, written at exit.
		defer func() {
			if f, err := os.Create(p); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	if err := serve(cfg, path, log, level, sigs); err != nil {
		log.Error("mailhop stopped", "err", err)
		return exitFail
	}
	return exitOK
}

// serve wires the parts together and runs until SIGTERM or SIGINT on sigs
// (SIGHUP: reload): inbound server → queue → delivery agent → DNS, plus the
// admin socket.
func serve(cfg *config.Config, path string, log *slog.Logger, level *slog.LevelVar, sigs <-chan os.Signal) error {
	boot := cfg // what the process binds and opens now; reloads compare with it
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	store, err := queue.OpenLogStore(filepath.Join(cfg.DataDir, "queue"), log)
	if err != nil {
		return err
	}
	q, err := queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{
		RetryIntervals: cfg.RetryDurations(), Logger: log, Store: store})
	if err != nil {
		store.Close()
		return err
	}
	defer q.Close()
	st := q.Stats()
	log.Info("queue recovered", "messages", st.Messages, "pending_recipients", st.Recipients)

	res, err := dnsmx.NewResolver(cfg.Delivery.Resolvers, 0)
	if err != nil {
		return fmt.Errorf("delivery.resolvers: %w", err)
	}
	var current atomic.Pointer[config.Config] // the running configuration, for the injector
	current.Store(cfg)
	inj := &admin.Injector{Queue: q, Config: current.Load, Log: log}
	var mets *metrics.Metrics
	var observer outbound.Observer
	if cfg.Admin.MetricsAddress != "" {
		mets = metrics.New(nil) // the snapshot function is set below, once every part exists
		observer = mets
	}
	agent, err := outbound.New(outbound.Options{Config: cfg, Queue: q, Resolver: res, Logger: log, Observer: observer})
	if err != nil {
		return err
	}
	in, err := inbound.New(cfg, q, log)
	if err != nil {
		return err
	}
	inj.Signer = in.DKIM
	if mets != nil {
		mets.SetSnapshot(func() metrics.Snapshot { return snapshot(q, store, agent, res, in, inj) })
		ms, err := metrics.Listen(cfg.Admin.MetricsAddress, mets)
		if err != nil {
			return fmt.Errorf("admin.metrics_address: %w", err)
		}
		defer ms.Shutdown(context.Background())
		log.Info("metrics served", "address", "http://"+ms.Addr().String()+"/metrics")
	}

	// The SMTP ports are bound before anything is delivered: a relay that
	// cannot have its ports (one already running, a port in use) exits
	// without having sent mail.
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	lns, err := in.Listen(serveCtx)
	if err != nil {
		return err
	}
	defer func() { // on an early return; after serving they are closed already
		for _, ln := range lns {
			ln.Close()
		}
	}()

	// Messages sendmail left while the relay was stopped go in first.
	pickupDir, err := admin.PreparePickup(cfg.DataDir, cfg.Admin.SocketGroup)
	if err != nil {
		return err
	}
	drainPickup(inj, pickupDir, log)

	adminLn, err := admin.Listen(cfg.Admin.Socket)
	if err != nil {
		return err
	}
	if cfg.Admin.SocketGroup != "" {
		if err := admin.SetSocketGroup(cfg.Admin.Socket, cfg.Admin.SocketGroup); err != nil {
			adminLn.Close()
			return err
		}
	}
	// Each connection carries its peer's uid, which injection records.
	adminLn = admin.PeerCredListener(adminLn)
	adm := &admin.Server{Queue: q, Bouncer: agent, Log: log,
		Extra: map[string]http.Handler{admin.InjectPath: inj}}
	adminDone := make(chan struct{})
	go func() {
		defer close(adminDone)
		if err := adm.Serve(adminLn); err != nil {
			log.Error("admin socket stopped", "err", err)
		}
	}()
	defer os.Remove(cfg.Admin.Socket)

	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx) }()

	serveDone := make(chan error, 1)
	go func() { serveDone <- in.ServeListeners(serveCtx, lns) }()
	log.Info("mailhop started", "version", version, "hostname", cfg.Hostname, "config", path,
		"admin_socket", cfg.Admin.Socket)
	sdNotify("READY=1")

	pickupTick := time.NewTicker(pickupInterval)
	defer pickupTick.Stop()

	var runErr error
loop:
	for {
		select {
		case err := <-serveDone:
			runErr = err
			break loop
		case err := <-agentDone:
			runErr = fmt.Errorf("delivery agent: %w", err)
			break loop
		case <-pickupTick.C:
			drainPickup(inj, pickupDir, log)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				cfg = reload(path, cfg, boot, in, agent, res, log, level)
				current.Store(cfg)
				continue
			}
			log.Info("shutting down", "signal", sig.String())
			sdNotify("STOPPING=1")
			break loop
		}
	}

	// Stop taking new mail on both sides at once, and let SMTP
	// transactions and deliveries under way finish within the grace time.
	// A delivery still running then is cut, and its message given back to
	// the queue (it may be sent again: at least once, never lost). Then the
	// queue closes.
	grace := cfg.Limits.ShutdownTimeout.Duration
	if grace <= 0 {
		grace = shutdownGrace
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	stopAgent()
	if err := in.Shutdown(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			log.Warn("SMTP sessions did not finish in time; closed with 421", "grace", grace)
		} else {
			log.Warn("inbound shutdown", "err", err)
		}
	}
	stopServe()
	select {
	case <-agentDone:
	case <-ctx.Done():
		select {
		case <-agentDone:
			// Done as well: the inbound side used up the grace time,
			// not the deliveries.
		default:
			log.Warn("deliveries did not finish in time; cutting them short", "grace", grace)
			agent.Abort()
			select {
			case <-agentDone:
			case <-time.After(10 * time.Second):
				log.Error("deliveries did not stop")
			}
		}
	}
	adm.Shutdown(ctx)
	<-adminDone
	if err := q.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
		log.Error("closing queue", "err", err)
	}
	if runErr == nil {
		log.Info("mailhop stopped") // else the caller logs the error
	}
	return runErr
}

// sdNotify tells systemd (a Type=notify unit) how the service stands; it does
// nothing outside systemd. Best effort: errors are ignored.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// tuneRuntime sets the Go runtime up for a relay; the GOGC, GOMEMLIMIT
// and GOMAXPROCS environment variables still take precedence.
//
// GC: the live heap of a relay is small (envelopes, buffers), so the
// default GOGC=100 collects every few hundred messages. GOGC=400 cuts the
// collector's share of the CPU by about a fifth of mailhop's total; a soft
// memory limit that follows the live heap (followLiveHeap) makes it collect
// harder before memory grows past twice that, within 80–192 MiB.
//
// GOMAXPROCS: one more than Go's default (the CPUs, or the container's
// quota). Most of a relay's CPU time is spent in system calls (a write per
// SMTP reply, the queue's fdatasync), and a goroutine's P stays with its
// thread through a system call until the runtime's monitor takes it back
// (after 20 µs at the soonest, often much later), so with one P per CPU
// the CPUs idled while every P sat in a call: on the project's 2-core machine the peerbench
// load ran 84% busy at about 1,590 messages per second with 2 Ps, 87% busy
// at about 1,770 with 3 (medians of four alternating runs; 4 Ps were no
// better than 3). Set explicitly, GOMAXPROCS no longer follows a change
// of the container's CPU quota while the relay runs; a restart does.
func tuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(maxMemoryLimit)
		go followLiveHeap(time.Second)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
}

// The soft memory limit follows the live heap (memoryLimitFor): with
// GOGC=400 alone, 100 busy sessions (a live heap of about 20 MB) let the
// heap grow to 5 times that between collections, and the relay's resident
// memory went from 74 to 139 MiB from one run to the next.
const (
	minMemoryLimit = 80 << 20
	maxMemoryLimit = 192 << 20
)

// memoryLimitFor is the soft memory limit for a live heap of live bytes:
// twice that, within [minMemoryLimit, maxMemoryLimit]. A small heap gets
// GOGC=400's room up to 80 MiB and no more; a queue of a million
// recipients (about 150 MB live) is held near 192 MiB, as before.
func memoryLimitFor(live uint64) int64 {
	return min(max(int64(2*live), minMemoryLimit), maxMemoryLimit)
}

// followLiveHeap sets the soft memory limit from the live heap every
// period, for the life of the process.
func followLiveHeap(period time.Duration) {
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	for range time.Tick(period) {
		rtmetrics.Read(sample)
		if sample[0].Value.Kind() == rtmetrics.KindUint64 {
			debug.SetMemoryLimit(memoryLimitFor(sample[0].Value.Uint64()))
		}
	}
}

// warnConfig logs what is risky in a configuration that loaded: at the
// start and at every reload, so a user added with the example's password
// is warned about as soon as it can log in.
func warnConfig(cfg *config.Config, path string, log *slog.Logger) {
	warnReadableSecrets(cfg, path, log)
	for _, w := range cfg.Warnings() {
		log.Warn("configuration: " + w)
	}
}

// warnReadableSecrets warns when a configuration that holds secrets
// (password hashes, smarthost passwords) can be read by every local user.
func warnReadableSecrets(cfg *config.Config, path string, log *slog.Logger) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return
	}
	secrets := len(cfg.User) > 0
	for _, r := range cfg.Route {
		if r.Password != "" && r.PasswordFile == "" && r.PasswordEnv == "" {
			secrets = true
		}
	}
	if secrets {
		log.Warn("the configuration file holds secrets and is readable by every user; chmod o-r it",
			"config", path, "mode", fi.Mode().Perm().String())
	}
}

// drainPickup queues what sendmail left in the pickup directory.
func drainPickup(inj *admin.Injector, dir string, log *slog.Logger) {
	n, err := inj.DrainPickup(dir)
	if err != nil {
		log.Error("pickup directory: not every file could be queued; will try again", "dir", dir, "queued", n, "err", err)
	} else if n > 0 {
		log.Info("pickup directory drained", "dir", dir, "queued", n)
	}
}

// snapshot reads every part's counters for one metrics scrape.
func snapshot(q *queue.Queue, store *queue.LogStore, agent *outbound.Agent, res *dnsmx.Resolver,
	in *inbound.Server, inj *admin.Injector) metrics.Snapshot {
	qs := q.Stats()
	ob := agent.Stats()
	is := in.Stats()
	lookups, failures := res.Stats()
	batches, _ := store.CommitStats()
	return metrics.Snapshot{
		Received:        is.Accepted + inj.Injected(),
		Refused:         is.Refused,
		Delivered:       ob.Delivered,
		Deferred:        ob.Deferred,
		Bounced:         ob.Bounced,
		QueueMessages:   qs.Messages,
		QueueRecipients: qs.Recipients,
		QueueOldest:     qs.Oldest,
		ConnectionsIn:   is.OpenConnections,
		TLSIn:           is.TLSConnections,
		TLSOut:          ob.TLSConns,
		DNSLookups:      lookups,
		DNSFailures:     failures,
		Fsyncs:          batches,
	}
}

// reload loads the configuration again (SIGHUP). A configuration with
// problems is refused and the running one stays.
// boot is the configuration the process started with: what only a restart
// applies (listeners, sockets) still runs as boot says.
func reload(path string, old, boot *config.Config, in *inbound.Server, agent *outbound.Agent, res *dnsmx.Resolver,
	log *slog.Logger, level *slog.LevelVar) *config.Config {
	cfg, err := config.Load(path)
	if err != nil {
		log.Error("reload refused: configuration has problems; keeping the running one", "err", err)
		return old
	}
	restart := restartOnly(boot, cfg)
	// The queue, admin socket, pickup directory and generated certificate
	// stay where they are until a restart.
	cfg.DataDir = old.DataDir
	resolversChanged := !slices.Equal(old.Delivery.Resolvers, cfg.Delivery.Resolvers)
	if resolversChanged {
		if err := res.SetServers(cfg.Delivery.Resolvers); err != nil {
			log.Error("reload refused: delivery.resolvers", "err", err)
			return old
		}
	}
	if err := in.SetConfig(cfg); err != nil {
		log.Error("reload refused", "err", err)
		if resolversChanged {
			_ = res.SetServers(old.Delivery.Resolvers) // worked before
		}
		return old
	}
	agent.SetConfig(cfg)
	setLogLevel(level, cfg.Log.Level)
	log.Info("configuration reloaded", "config", path)
	warnConfig(cfg, path, log)
	if len(restart) > 0 {
		log.Warn("reload: these settings take effect only after a restart; the running ones stay", "keys", strings.Join(restart, ", "))
	}
	return cfg
}

// restartOnly names the settings that differ between old and cfg and that
// only a restart applies: what the process bound or opened at its start.
func restartOnly(old, cfg *config.Config) []string {
	var keys []string
	if !slices.Equal(old.Listener, cfg.Listener) {
		keys = append(keys, "listener")
	}
	for _, c := range []struct {
		key      string
		old, new string
	}{
		{"data_dir", old.DataDir, cfg.DataDir},
		{"admin.socket", old.Admin.Socket, cfg.Admin.Socket},
		{"admin.socket_group", old.Admin.SocketGroup, cfg.Admin.SocketGroup},
		{"admin.metrics_address", old.Admin.MetricsAddress, cfg.Admin.MetricsAddress},
		{"log.format", old.Log.Format, cfg.Log.Format},
	} {
		if c.old != c.new {
			keys = append(keys, c.key)
		}
	}
	return keys
}
