package outbound

// Sending TLS reports (RFC 8460 §3, §5).
//
// Every delivery.tls_report_interval (24h: at each UTC midnight; shorter
// intervals at multiples of themselves since midnight) Run calls
// SendTLSReports, which:
//
//  1. takes the TLS counts of the period and resets them (Agent.TLSResults);
//  2. for each policy domain counted, looks up _smtp._tls.DOMAIN TXT; a
//     domain without exactly one "v=TLSRPTv1" record, or without a usable rua
//     URI (tlsrpt.ParseRecord), gets no report (its counts are dropped with
//     the period);
//  3. builds one report per domain, gzipped (tlsrpt.NewReport), and hands it
//     to every rua URI (at most five): a mailto: address gets an RFC 8460
//     §5.3 multipart/report message through the queue — from
//     delivery.tls_report_from, never the null sender, so the queue retries
//     it like any mail and a bounce reaches a person; an https: URL gets one
//     POST (§5.4) with the system roots plus delivery.extra_roots_file.
//
// A report that cannot be delivered is logged and dropped: a POST is tried
// once, a mail is retried by the queue until max_queue_age. The counts of a
// period are never carried into the next.
//
// The counts, their file, the record, the report and its POST are
// relay/tlsrpt's; what needs the agent (its clock, configuration, resolver,
// queue, dialer and log) is here.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
	"github.com/mailhop/mailhop/relay/tlsrpt"
)

const (
	// reportPostTimeout bounds one https: delivery, body included.
	reportPostTimeout = time.Minute
	// reportRunTimeout bounds one whole run of SendTLSReports from Run.
	reportRunTimeout = 30 * time.Minute
)

// tlsReporter is the agent's report state.
type tlsReporter struct {
	mu    sync.Mutex // one run at a time
	start time.Time  // when the period now counted began
	// reschedule wakes tlsReportLoop when a reload changed
	// delivery.tls_report_interval, so the new period applies now rather
	// than after the old one ends (up to a day later).
	reschedule chan struct{}
	// armed, when set (by tests, before the loop starts), is called with
	// the interval each time the loop starts waiting for a period's end.
	armed func(time.Duration)
}

// TLSReportResult is what SendTLSReports did.
type TLSReportResult struct {
	Domains int // policy domains counted in the period
	Reports int // reports built (domains that publish a usable rua)
	Sent    int // deliveries handed on: mails queued and POSTs answered 2xx
}

// SendTLSReports ends the current reporting period: it takes (and resets)
// the TLS counts, and sends a report for each counted domain that asks for
// one. Run calls it every delivery.tls_report_interval when
// delivery.tls_reports is on; tests and operators may call it at any time.
// The error joins every failure (each is also logged); a domain's failure
// does not stop the others.
func (a *Agent) SendTLSReports(ctx context.Context) (TLSReportResult, error) {
	r := &a.tlsrpt
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := a.config()
	end := a.now()
	start := r.start
	if start.IsZero() || !start.Before(end) {
		start = end.Add(-cfg.Delivery.TLSReportInterval.Duration)
	}
	counts := a.TLSResults(true)
	r.start = end

	var res TLSReportResult
	var domains []string
	for _, c := range counts { // sorted by domain
		if len(domains) == 0 || domains[len(domains)-1] != c.PolicyDomain {
			domains = append(domains, c.PolicyDomain)
		}
	}
	res.Domains = len(domains)
	if len(domains) == 0 {
		return res, nil
	}
	txt, ok := a.resolver.(txtResolver)
	if !ok {
		return res, errors.New("tls reports: the resolver cannot look up TXT records")
	}
	s := &reportSender{a: a, cfg: cfg, start: start, end: end}
	defer s.close()
	var errs []error
	for _, d := range domains {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("tls reports: stopped before %s: %w", d, err))
			break
		}
		built, sent, err := s.domain(ctx, txt, d, counts)
		if built {
			res.Reports++
		}
		res.Sent += sent
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// tlsReportLoop calls SendTLSReports at the end of every period until ctx
// is done. With delivery.tls_reports off the period's counts are dropped.
func (a *Agent) tlsReportLoop(ctx context.Context) {
	save := func() {
		if err := a.saveTLSCounts(); err != nil {
			a.log.Warn("tls reports: counts not saved", "err", err)
		}
	}
	defer save() // at the stop: the next run goes on counting
	saveTick := time.NewTicker(tlsrpt.SaveInterval)
	defer saveTick.Stop()
schedule:
	for {
		iv := a.config().Delivery.TLSReportInterval.Duration
		if iv <= 0 {
			iv = 24 * time.Hour
		}
		now := a.now()
		t := time.NewTimer(tlsrpt.NextPeriodEnd(now, iv).Sub(now))
		if a.tlsrpt.armed != nil {
			a.tlsrpt.armed(iv)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-saveTick.C:
				save()
			case <-a.tlsrpt.reschedule:
				t.Stop()
				continue schedule
			case <-t.C:
				break wait
			}
		}
		if !a.config().Delivery.TLSReports {
			a.tlsrpt.mu.Lock()
			a.TLSResults(true)
			a.tlsrpt.start = a.now()
			a.tlsrpt.mu.Unlock()
			save()
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, reportRunTimeout)
		res, err := a.SendTLSReports(rctx)
		cancel()
		save() // the period just reported is not to be counted again
		if err != nil {
			a.log.Warn("tls reports: some could not be sent", "domains", res.Domains, "reports", res.Reports, "sent", res.Sent, "err", err)
		} else if res.Domains > 0 {
			a.log.Info("tls reports done", "domains", res.Domains, "reports", res.Reports, "sent", res.Sent)
		}
	}
}

// reportSender sends the reports of one period.
type reportSender struct {
	a          *Agent
	cfg        *config.Config
	start, end time.Time

	client *http.Client // made at the first https: rua
	signer *dkimsign.Signer
	signed bool // signer loaded (or failed to)
}

func (s *reportSender) close() {
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
}

// domain sends domain's report to its rua URIs; built says whether there
// was one to send, sent how many deliveries were handed on.
func (s *reportSender) domain(ctx context.Context, txt txtResolver, domain string, counts []tlsrpt.Counts) (built bool, sent int, err error) {
	log := s.a.log.With("domain", domain)
	recs, err := txt.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		log.Warn("tls report: TLSRPT lookup failed; no report for the period", "err", err)
		return false, 0, fmt.Errorf("tls report for %s: %w", domain, err)
	}
	ruas, err := tlsrpt.ParseRecord(recs)
	if err != nil {
		log.Debug("tls report: none requested", "why", err.Error())
		return false, 0, nil
	}
	host := s.cfg.Hostname
	rep, err := tlsrpt.NewReport(domain, host, s.cfg.Delivery.ReportFrom(host), s.start, s.end, counts)
	if err != nil {
		log.Error("tls report: cannot build it", "err", err)
		return false, 0, fmt.Errorf("tls report for %s: %w", domain, err)
	}
	info := rep.Info
	var errs []error
	for _, u := range ruas {
		var err error
		var qid string
		if u.Scheme == "mailto" {
			qid, err = s.mail(rep, u.Opaque)
		} else {
			err = s.post(ctx, rep, u)
		}
		if err != nil {
			log.Warn("tls report not sent", "report_id", info.ReportID, "rua", u.String(), "err", err)
			errs = append(errs, fmt.Errorf("tls report for %s to %s: %w", domain, u.String(), err))
			continue
		}
		sent++
		if qid != "" {
			log.Info("tls report queued", "report_id", info.ReportID, "rua", u.String(), "queue_id", qid)
		} else {
			log.Info("tls report posted", "report_id", info.ReportID, "rua", u.String())
		}
	}
	return true, sent, errors.Join(errs...)
}

// mail queues the report for rcpt as an RFC 8460 §5.3 message; it returns
// the queue ID.
func (s *reportSender) mail(r *tlsrpt.Report, rcpt string) (string, error) {
	msg, err := r.Message(rcpt, s.end)
	if err != nil {
		return "", err
	}
	if sig := s.sign(msg); sig != "" {
		msg = append([]byte(sig), msg...)
	}
	env := &queue.Envelope{From: r.From, Recipients: []queue.Recipient{{Address: rcpt}}}
	if err := s.a.q.Enqueue(env, bytes.NewReader(msg)); err != nil {
		return "", err
	}
	return env.ID, nil
}

// sign returns the DKIM-Signature fields for msg when a [[dkim]] key covers
// the reporting address's domain (RFC 8460 §5.3: reports SHOULD be
// signed), or "".
func (s *reportSender) sign(msg []byte) string {
	if len(s.cfg.DKIM) == 0 {
		return ""
	}
	if !s.signed {
		s.signed = true
		sg, err := dkimsign.New(s.cfg.DKIM)
		if err != nil {
			s.a.log.Warn("tls reports: DKIM keys unusable; reports go unsigned", "err", err)
		}
		s.signer = sg
	}
	if s.signer == nil {
		return ""
	}
	i := bytes.Index(msg, []byte("\r\n\r\n"))
	sig, err := s.signer.Sign(msg[:i+4], bytes.NewReader(msg[i+4:]))
	if err != nil {
		s.a.log.Warn("tls reports: DKIM signing failed; report goes unsigned", "err", err)
		return ""
	}
	return sig
}

// post sends the report to an https: rua (RFC 8460 §5.4).
func (s *reportSender) post(ctx context.Context, r *tlsrpt.Report, u *url.URL) error {
	if s.client == nil {
		s.client = &http.Client{
			Timeout: reportPostTimeout,
			Transport: &http.Transport{
				DialContext:         s.a.reportDial,
				TLSClientConfig:     &tls.Config{RootCAs: s.a.rootPool(s.cfg.Delivery.ExtraRootsFile), MinVersion: tls.VersionTLS12},
				TLSHandshakeTimeout: 10 * time.Second,
				ForceAttemptHTTP2:   true,
			},
			// A redirected POST would send the report where the
			// domain's DNS did not say.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return r.Post(ctx, s.client, u)
}

// reportDial connects to an https: rua host (see dialHost).
func (a *Agent) reportDial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	return a.dialHost(ctx, host, port)
}

// TLSResults returns the TLS outcomes counted per policy domain, sorted by
// domain and type; with reset, counting starts afresh (a daily TLS report
// job takes them once a day).
func (a *Agent) TLSResults(reset bool) []tlsrpt.Counts {
	return a.tlsStats.Results(reset)
}

// tlsCountsPath is the file, or "" when there is no data_dir (tests).
func (a *Agent) tlsCountsPath() string {
	if d := a.config().DataDir; d != "" {
		return filepath.Join(d, tlsrpt.CountsFile)
	}
	return ""
}

// saveTLSCounts writes the period's start and counts (replacing the file
// atomically).
func (a *Agent) saveTLSCounts() error {
	path := a.tlsCountsPath()
	if path == "" {
		return nil
	}
	a.tlsrpt.mu.Lock()
	start, counts := a.tlsrpt.start, a.TLSResults(false)
	a.tlsrpt.mu.Unlock()
	return tlsrpt.SaveCounts(path, start, counts)
}

// loadTLSCounts adds the counts a previous run saved to this one's, and
// takes over its period's start. A file that cannot be read is logged and
// left for the next save to replace.
func (a *Agent) loadTLSCounts() {
	path := a.tlsCountsPath()
	if path == "" {
		return
	}
	start, counts, err := tlsrpt.LoadCounts(path)
	if err != nil {
		a.log.Warn("tls reports: the counts of the previous run are lost", "file", path, "err", err)
		return
	}
	if !start.IsZero() && start.Before(a.tlsrpt.start) {
		a.tlsrpt.start = start
	}
	a.tlsStats.Merge(counts)
}
