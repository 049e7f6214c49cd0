package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"time"

	"github.com/mailhop/mailhop/relay/mailhdr"
)

// reportMediaType is the gzipped report's type (RFC 8460 §6.4).
const reportMediaType = "application/tlsrpt+gzip"

// Report is one domain's report, ready to send.
type Report struct {
	Domain string     // the policy domain
	Info   ReportInfo // the report's sender, ID and period
	From   string     // the reporting address: a mail's From
	uniq   string     // the filename's unique-id
	gz     []byte     // the gzipped JSON
}

// NewReport builds domain's report from counts for the period from start
// to end: host is the relay's name (organization-name, the submitter),
// from the reporting address (contact-info, a mail's From).
func NewReport(domain, host, from string, start, end time.Time, counts []Counts) (*Report, error) {
	uniq := mailhdr.Token(8)
	info := ReportInfo{Organization: host, Contact: from,
		ReportID: fmt.Sprintf("%s.%s@%s", end.UTC().Format("20060102T150405Z"), uniq, host),
		Start:    start, End: end}
	js, err := Build(domain, counts, info)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(js)
	zw.Close()
	return &Report{Domain: domain, Info: info, From: from, uniq: uniq, gz: gz.Bytes()}, nil
}

// filename is RFC 8460 §5.1's: sender!policy-domain!begin!end!unique-id.json.gz.
func (r *Report) filename() string {
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", r.Info.Organization, r.Domain,
		r.Info.Start.Unix(), r.Info.End.Unix(), r.uniq)
}

// Message is the report mail for rcpt, dated now: multipart/report; report-type="tlsrpt" with a
// readable part and the gzipped JSON, lines ending in CRLF.
func (r *Report) Message(rcpt string, now time.Time) ([]byte, error) {
	var b bytes.Buffer
	host := r.Info.Organization
	mw := multipart.NewWriter(&b)
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", "<"+r.From+">")
	h("To", "<"+rcpt+">")
	h("Date", now.Format(time.RFC1123Z))
	h("Message-ID", fmt.Sprintf("<tlsrpt.%d.%s@%s>", now.UnixNano(), mailhdr.Token(8), host))
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", r.Domain, host, r.Info.ReportID))
	h("TLS-Report-Domain", r.Domain)
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
		host, r.Domain, r.Info.Start.UTC().Format(time.RFC3339), r.Info.End.UTC().Format(time.RFC3339))
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

// Post sends the report to an https: rua (RFC 8460 §5.4) with client, which
// should follow no redirect (it would send the report where the domain's DNS
// did not say): any 2xx is success; anything else is logged by the caller
// and not retried.
func (r *Report) Post(ctx context.Context, client *http.Client, u *url.URL) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(r.gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", reportMediaType)
	req.Header.Set("User-Agent", "mailhop")
	resp, err := client.Do(req)
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
