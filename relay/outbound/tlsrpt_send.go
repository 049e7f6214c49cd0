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
//     URI, gets no report (its counts are dropped with the period);
//  3. builds one report per domain (BuildTLSReport), gzips it, and hands it
//     to every rua URI (at most maxRUA): a mailto: address gets an RFC 8460
//     §5.3 multipart/report message through the queue — from
//     delivery.tls_report_from, never the null sender, so the queue retries
//     it like any mail and a bounce reaches a person; an https: URL gets one
//     POST (§5.4) with the system roots plus delivery.extra_roots_file.
//
// A report that cannot be delivered is logged and dropped: a POST is tried
// once, a mail is retried by the queue until max_queue_age. The counts of a
// period are never carried into the next.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

const (
	// maxRUA bounds the destinations of one domain's report: a record
	// listing many would make us a cannon aimed at third parties.
	maxRUA = 5
	// reportPostTimeout bounds one https: delivery, body included.
	reportPostTimeout = time.Minute
	// reportRunTimeout bounds one whole run of SendTLSReports from Run.
	reportRunTimeout = 30 * time.Minute
	// reportMediaType is the gzipped report's type (RFC 8460 §6.4).
	reportMediaType = "application/tlsrpt+gzip"
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
	saveTick := time.NewTicker(tlsSaveInterval)
	defer saveTick.Stop()
schedule:
	for {
		iv := a.config().Delivery.TLSReportInterval.Duration
		if iv <= 0 {
			iv = 24 * time.Hour
		}
		now := a.now()
		t := time.NewTimer(nextReportTime(now, iv).Sub(now))
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

// nextReportTime is the end of the period after now: the next multiple of
// iv since the zero time, which for a divisor of 24h is aligned on UTC
// midnight (RFC 8460 §4.1 wants UTC days).
func nextReportTime(now time.Time, iv time.Duration) time.Time {
	return now.Truncate(iv).Add(iv)
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
func (s *reportSender) domain(ctx context.Context, txt txtResolver, domain string, counts []TLSCounts) (built bool, sent int, err error) {
	log := s.a.log.With("domain", domain)
	recs, err := txt.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		log.Warn("tls report: TLSRPT lookup failed; no report for the period", "err", err)
		return false, 0, fmt.Errorf("tls report for %s: %w", domain, err)
	}
	ruas, err := parseTLSRPT(recs)
	if err != nil {
		log.Debug("tls report: none requested", "why", err.Error())
		return false, 0, nil
	}
	host := s.cfg.Hostname
	from := s.cfg.Delivery.ReportFrom(host)
	uniq := randHex(8)
	info := TLSReportInfo{Organization: host, Contact: from,
		ReportID: fmt.Sprintf("%s.%s@%s", s.end.UTC().Format("20060102T150405Z"), uniq, host),
		Start:    s.start, End: s.end}
	js, err := BuildTLSReport(domain, counts, info)
	if err != nil {
		log.Error("tls report: cannot build it", "err", err)
		return false, 0, fmt.Errorf("tls report for %s: %w", domain, err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(js)
	zw.Close()
	rep := &builtReport{domain: domain, info: info, from: from, uniq: uniq, gz: gz.Bytes()}
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

// builtReport is one domain's report, ready to send.
type builtReport struct {
	domain string
	info   TLSReportInfo
	from   string
	uniq   string // the filename's unique-id
	gz     []byte // the gzipped JSON
}

// filename is RFC 8460 §5.1's: sender!policy-domain!begin!end!unique-id.json.gz.
func (r *builtReport) filename() string {
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", r.info.Organization, r.domain,
		r.info.Start.Unix(), r.info.End.Unix(), r.uniq)
}

// parseTLSRPT returns the usable rua URIs of the TLSRPT record among recs
// (RFC 8460 §3): records not starting with "v=TLSRPTv1" are ignored, and
// unless exactly one remains there is no policy. Only mailto: and https:
// URIs are kept, at most maxRUA.
func parseTLSRPT(recs []string) ([]*url.URL, error) {
	var rec string
	n := 0
	for _, r := range recs {
		if v, rest, _ := strings.Cut(r, ";"); strings.TrimSpace(v) == "v=TLSRPTv1" {
			rec = rest
			n++
		}
	}
	switch {
	case n == 0:
		return nil, errors.New("no TLSRPT record")
	case n > 1:
		return nil, fmt.Errorf("%d TLSRPT records (RFC 8460 §3: exactly one)", n)
	}
	var out []*url.URL
	for _, field := range strings.Split(rec, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), "=")
		if !ok || k != "rua" {
			continue // an extension, or empty after the last ";"
		}
		for _, raw := range strings.Split(v, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				continue
			}
			switch strings.ToLower(u.Scheme) {
			case "mailto":
				addr, err := url.PathUnescape(u.Opaque)
				if err != nil || !reportAddress(addr) {
					continue
				}
				out = append(out, &url.URL{Scheme: "mailto", Opaque: addr})
			case "https":
				if u.Host == "" || u.User != nil {
					continue
				}
				u.Scheme = "https"
				out = append(out, u)
			}
			if len(out) == maxRUA {
				return out, nil
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("TLSRPT record without a usable rua")
	}
	return out, nil
}

// reportAddress accepts a plain local@domain address that can go into an
// envelope and a header unquoted.
func reportAddress(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || len(addr) > 254 {
		return false
	}
	for _, c := range addr {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("<>()[]\\,;:\"", c) {
			return false
		}
	}
	return true
}

// mail queues the report for rcpt as an RFC 8460 §5.3 message; it returns
// the queue ID.
func (s *reportSender) mail(r *builtReport, rcpt string) (string, error) {
	msg, err := r.message(rcpt, s.end)
	if err != nil {
		return "", err
	}
	if sig := s.sign(msg); sig != "" {
		msg = append([]byte(sig), msg...)
	}
	env := &queue.Envelope{From: r.from, Recipients: []queue.Recipient{{Address: rcpt}}}
	if err := s.a.q.Enqueue(env, bytes.NewReader(msg)); err != nil {
		return "", err
	}
	return env.ID, nil
}

// message is the report mail: multipart/report; report-type="tlsrpt" with a
// readable part and the gzipped JSON, lines ending in CRLF.
func (r *builtReport) message(rcpt string, now time.Time) ([]byte, error) {
	var b bytes.Buffer
	host := r.info.Organization
	mw := multipart.NewWriter(&b)
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", "<"+r.from+">")
	h("To", "<"+rcpt+">")
	h("Date", now.Format(rfc5322Date))
	h("Message-ID", fmt.Sprintf("<tlsrpt.%d.%s@%s>", now.UnixNano(), randHex(8), host))
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", r.domain, host, r.info.ReportID))
	h("TLS-Report-Domain", r.domain)
	h("TLS-Report-Submitter", host)
	h("Auto-Submitted", "auto-generated") // RFC 3834: no auto-replies to it
	h("TLS-Required", "No")               // RFC 8460 §5.3: delivered even where TLS fails
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+mw.Boundary()+`"`)
	b.WriteString("\r\n")

	text, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"text/plain; charset=us-ascii"},
		"Content-Transfer-Encoding": {"7bit"}})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(text, "This is an aggregate TLS report (RFC 8460) from %s\r\nfor %s, covering %s to %s.\r\n",
		host, r.domain, r.info.Start.UTC().Format(time.RFC3339), r.info.End.UTC().Format(time.RFC3339))
	att, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {reportMediaType},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {`attachment; filename="` + r.filename() + `"`}})
	if err != nil {
		return nil, err
	}
	enc := base64.StdEncoding.EncodeToString(r.gz)
	for len(enc) > 76 {
		io.WriteString(att, enc[:76]+"\r\n")
		enc = enc[76:]
	}
	io.WriteString(att, enc+"\r\n")
	if err := mw.Close(); err != nil {
		return nil, err
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
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

// post sends the report to an https: rua (RFC 8460 §5.4): any 2xx is
// success; anything else is logged by the caller and not retried.
func (s *reportSender) post(ctx context.Context, r *builtReport, u *url.URL) error {
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(r.gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", reportMediaType)
	req.Header.Set("User-Agent", "mailhop")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

// reportDial connects to an https: rua host (see dialHost).
func (a *Agent) reportDial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	return a.dialHost(ctx, host, port)
}

const rfc5322Date = "Mon, 02 Jan 2006 15:04:05 -0700"

func randHex(n int) string {
	p := make([]byte, n)
	rand.Read(p)
	return hex.EncodeToString(p)
}
