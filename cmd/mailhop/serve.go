package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/inbound"
	"github.com/mailhop/mailhop/relay/outbound"
)

// shutdownGrace is how long SMTP transactions and deliveries may take to
// finish after SIGTERM.
const shutdownGrace = 30 * time.Second

// newLogger builds the slog logger the [log] section asks for.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdServe(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "configuration file")
	if _, err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	path := configPath(*cfgFlag)
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return exitFail
	}
	log := newLogger(cfg.Log, stderr)
	warnReadableSecrets(cfg, path, log)
	if err := serve(cfg, path, log); err != nil {
		log.Error("mailhop stopped", "err", err)
		return exitFail
	}
	return exitOK
}

// serve wires the parts together and runs until SIGTERM or SIGINT:
// inbound server → queue → delivery agent → DNS, plus the admin socket.
func serve(cfg *config.Config, path string, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	q, err := queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{
		RetryIntervals: cfg.RetryDurations(), Logger: log})
	if err != nil {
		return err
	}
	defer q.Close()
	st := q.Stats()
	log.Info("queue recovered", "messages", st.Messages, "pending_recipients", st.Recipients)

	res, err := dnsmx.NewResolver(cfg.Delivery.Resolvers, 0)
	if err != nil {
		return fmt.Errorf("delivery.resolvers: %w", err)
	}
	agent, err := outbound.New(outbound.Options{Config: cfg, Queue: q, Resolver: res, Logger: log})
	if err != nil {
		return err
	}
	in, err := inbound.New(cfg, q, log)
	if err != nil {
		return err
	}

	adminLn, err := admin.Listen(cfg.Admin.Socket)
	if err != nil {
		return err
	}
	adm := &admin.Server{Queue: q, Bouncer: agent, Log: log}
	go func() {
		if err := adm.Serve(adminLn); err != nil {
			log.Error("admin socket stopped", "err", err)
		}
	}()
	defer os.Remove(cfg.Admin.Socket)

	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx) }()

	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	serveDone := make(chan error, 1)
	go func() { serveDone <- in.ListenAndServe(serveCtx) }()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	log.Info("mailhop started", "version", version, "hostname", cfg.Hostname, "config", path,
		"admin_socket", cfg.Admin.Socket)

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
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				cfg = reload(path, cfg, in, agent, log)
				continue
			}
			log.Info("shutting down", "signal", sig.String())
			break loop
		}
	}

	// Stop accepting, let open transactions finish, then stop deliveries
	// (in-flight attempts are given back to the queue), then the queue.
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := in.Shutdown(ctx); err != nil {
		log.Warn("inbound shutdown", "err", err)
	}
	stopServe()
	stopAgent()
	select {
	case <-agentDone:
	case <-ctx.Done():
		log.Warn("deliveries did not stop in time")
	}
	adm.Shutdown(ctx)
	if err := q.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
		log.Error("closing queue", "err", err)
	}
	log.Info("mailhop stopped")
	return runErr
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

// reload loads the configuration again (SIGHUP). A configuration with
// problems is refused and the running one stays.
func reload(path string, old *config.Config, in *inbound.Server, agent *outbound.Agent, log *slog.Logger) *config.Config {
	cfg, err := config.Load(path)
	if err != nil {
		log.Error("reload refused: configuration has problems; keeping the running one", "err", err)
		return old
	}
	if err := in.SetConfig(cfg); err != nil {
		log.Error("reload refused", "err", err)
		return old
	}
	agent.SetConfig(cfg)
	log.Info("configuration reloaded", "config", path)
	return cfg
}
