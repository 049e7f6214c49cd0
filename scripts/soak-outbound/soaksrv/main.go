// Command soaksrv is the remote side of the outbound soak run: a loopback DNS
// server (miekg/dns) and one scripted SMTP server per recipient domain, each
// on its own loopback address at the relay's delivery.mx_port. Every
// transaction and every delivered recipient is written as a JSON line to
// -events; the domain table goes to -domains for the load generator and the
// checker. It serves until SIGTERM or SIGINT.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Domain is one recipient domain and the behaviour of its server.
type Domain struct {
	Name   string  `json:"name"`
	Kind   string  `json:"kind"`
	Weight float64 `json:"weight"` // relative share of the load's domain picks
	IP     string  `json:"ip"`     // its MX host's address ("" for DNS-only kinds)
	IP2    string  `json:"ip2"`    // mxpair: the backup MX's address
	Faulty bool    `json:"faulty"` // a kind that may be marked dead
	DSN    bool    `json:"dsn"`    // the server offers DSN
}

// kinds: name, count, weight, faulty, DSN offered.
var kinds = []struct {
	name   string
	n      int
	weight float64
	faulty bool
	dsn    bool
}{
	{"accept", 10, 3, false, true},
	{"accept-nodsn", 6, 3, false, false},
	{"grey", 4, 2, false, true},         // g*: 451 the first time per (sender, rcpt); t*: always 451
	{"reject", 4, 2, false, false},      // b*: 550 5.1.1; q*: 552 5.2.2
	{"limit30", 4, 2, false, true},      // 452 4.5.3 beyond 30 RCPTs in a transaction
	{"limit20-552", 2, 2, false, false}, // 552 without enhanced code beyond 20
	{"mbfull", 3, 2, false, true},       // f*: 452 4.2.2 half the time; h*: always
	{"rcptmax10", 2, 2, false, true},    // LIMITS RCPTMAX=10, 452 4.5.3 beyond it
	{"stall-ehlo", 2, 0.3, true, true},  // greets, never answers EHLO
	{"stall-rcpt", 2, 0.3, true, true},  // never answers the first, second or third RCPT (or DATA)
	{"stall-body", 2, 0.3, true, true},  // never answers the end of data
	{"drop-data", 3, 1, true, true},     // drops the connection in the body 30% of transactions
	{"greet421", 3, 1, true, true},      // 421 at greeting 40% of connections
	{"slow", 3, 0.5, false, true},       // every reply 1-3 s late
	{"mxpair", 2, 1, false, true},       // MX 10 stalls after greeting, MX 20 accepts
	{"stall-data", 2, 0.3, true, true},  // never answers DATA
	{"stall-2nd", 2, 1, false, true},    // answers a connection's first transaction, stalls at the next MAIL
	{"accept-7bit", 2, 2, false, false}, // no 8BITMIME: 8-bit mail comes converted
	{"cut-close", 2, 1.5, false, true},  // closes the connection after a transaction's 250, 35% of the time
	{"cut-421", 2, 1.5, false, false},   // 421 to a MAIL after the first transaction, 35% of the time
	{"mailmax2", 2, 1.5, false, true},   // LIMITS MAILMAX=2; 451 4.5.3 to a connection's third MAIL and after
	{"nxdomain", 3, 0.5, false, false},  // no such domain
	{"servfail", 3, 0.5, true, false},   // SERVFAIL
	{"sender", 1, 0, false, true},       // the senders' domain: records DSNs
}

var (
	base     = flag.String("base", "127.0.48.", "the first three octets of the loopback addresses to use")
	first    = flag.Int("first", 10, "the last octet of the first MX address")
	mxPort   = flag.Int("mxport", 48025, "the port of every MX server")
	dnsAddr  = flag.String("dns", "127.0.48.2:48053", "the DNS server's address (UDP and TCP)")
	events   = flag.String("events", "events.jsonl", "where the events go")
	domains  = flag.String("domains", "domains.json", "where the domain table goes")
	seed     = flag.Uint64("seed", 1, "random seed")
	suffix   = flag.String("suffix", "soak.test", "the parent of every domain")
	stallMax = flag.Duration("stall-max", 2*time.Minute, "how long a stalled session is held at most")
)

// event is one JSON line of -events.
type event struct {
	T      string   `json:"t"` // txn, dlv, dsn, conn, anomaly
	Time   int64    `json:"time_us"`
	Domain string   `json:"domain,omitempty"`
	Kind   string   `json:"kind,omitempty"`
	Server string   `json:"server,omitempty"`
	Conn   int64    `json:"conn,omitempty"`
	ConnAt int64    `json:"conn_at_us,omitempty"` // when the connection was accepted
	Txn    int      `json:"txn,omitempty"`        // the transaction's number on its connection
	From   string   `json:"from,omitempty"`
	EnvID  string   `json:"envid,omitempty"`
	Ret    string   `json:"ret,omitempty"`
	MsgID  string   `json:"msgid,omitempty"`
	Rcpt   string   `json:"rcpt,omitempty"`
	Notify string   `json:"notify,omitempty"`
	NRcpt  int      `json:"nrcpt,omitempty"` // RCPT commands in the transaction
	NAcc   int      `json:"nacc,omitempty"`  // RCPTs accepted
	Out    string   `json:"out,omitempty"`   // delivered, dropped, stalled, refused, aborted
	Codes  string   `json:"codes,omitempty"` // the RCPT replies' codes, in order
	RC     []string `json:"rc,omitempty"`    // "address|reply code and enhanced code" per RCPT
	BodyOK *bool    `json:"body_ok,omitempty"`
	DSN    bool     `json:"dsn_offered,omitempty"`
	Size   int      `json:"size,omitempty"`
	Note   string   `json:"note,omitempty"`
	Dot    int64    `json:"dot_us,omitempty"` // when the end of data came (dlv)
	// DSN report fields (T == "dsn").
	Report *report `json:"report,omitempty"`
}

// report is what a delivery status notification said.
type report struct {
	To         string       `json:"to"`
	MsgID      string       `json:"msgid"` // the report's own Message-ID
	EnvID      string       `json:"envid"`
	OrigMsgID  string       `json:"orig_msgid"`
	Returned   string       `json:"returned"` // message/rfc822, text/rfc822-headers, none
	HasBody    bool         `json:"has_body"` // the returned part holds the original's body marker
	Recipients []reportRcpt `json:"rcpts"`
	Err        string       `json:"err,omitempty"`
}

type reportRcpt struct {
	Final  string `json:"final"`
	Orig   string `json:"orig,omitempty"`
	Action string `json:"action"`
	Status string `json:"status"`
	Diag   string `json:"diag,omitempty"`
}

var (
	evMu   sync.Mutex
	evW    *bufio.Writer
	connNo atomic.Int64
)

func emit(e event) {
	if e.Time == 0 {
		e.Time = time.Now().UnixMicro()
	}
	b, _ := json.Marshal(e)
	evMu.Lock()
	evW.Write(b)
	evW.WriteByte('\n')
	evMu.Unlock()
}

// server is one domain's SMTP server.
type server struct {
	d     *Domain
	kind  string // may differ from d.Kind: mxpair's two hosts
	ip    string
	dsn   bool
	rnd   *rand.Rand
	rndMu sync.Mutex
	grey  sync.Map // sender+rcpt seen
}

func (s *server) chance(p float64) bool {
	s.rndMu.Lock()
	defer s.rndMu.Unlock()
	return s.rnd.Float64() < p
}

func (s *server) slowDelay() time.Duration {
	s.rndMu.Lock()
	defer s.rndMu.Unlock()
	return time.Second + time.Duration(s.rnd.Int64N(int64(2*time.Second)))
}

func main() {
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	f, err := os.OpenFile(*events, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	evW = bufio.NewWriterSize(f, 1<<16)
	go func() {
		for range time.Tick(200 * time.Millisecond) {
			evMu.Lock()
			evW.Flush()
			evMu.Unlock()
		}
	}()

	rnd := rand.New(rand.NewPCG(*seed, 14))
	var table []*Domain
	ipn := *first
	nextIP := func() string {
		ip := fmt.Sprintf("%s%d", *base, ipn)
		ipn++
		return ip
	}
	for _, k := range kinds {
		for i := 1; i <= k.n; i++ {
			d := &Domain{Name: fmt.Sprintf("%s%02d.%s", k.name, i, *suffix), Kind: k.name, Weight: k.weight, Faulty: k.faulty, DSN: k.dsn}
			if k.name == "sender" {
				d.Name = "senders." + *suffix
			}
			switch k.name {
			case "nxdomain", "servfail":
			case "mxpair":
				d.IP, d.IP2 = nextIP(), nextIP()
			default:
				d.IP = nextIP()
			}
			table = append(table, d)
		}
	}
	b, _ := json.MarshalIndent(table, "", " ")
	if err := os.WriteFile(*domains, b, 0o644); err != nil {
		log.Fatal(err)
	}

	var servers []*server
	var listeners []net.Listener
	for _, d := range table {
		add := func(kind, ip string) {
			s := &server{d: d, kind: kind, ip: ip, dsn: d.DSN, rnd: rand.New(rand.NewPCG(rnd.Uint64(), rnd.Uint64()))}
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(*mxPort)))
			if err != nil {
				log.Fatalf("listen %s: %v", ip, err)
			}
			listeners = append(listeners, ln)
			servers = append(servers, s)
			go s.accept(ln)
		}
		switch {
		case d.Kind == "mxpair":
			add("stall-ehlo", d.IP)
			add("accept", d.IP2)
		case d.IP != "":
			add(d.Kind, d.IP)
		}
	}
	dnsSrv := serveDNS(table)
	log.Printf("soaksrv: %d domains, %d SMTP servers on %s*:%d, DNS on %s", len(table), len(servers), *base, *mxPort, *dnsAddr)
	fmt.Println("ready")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	for _, ln := range listeners {
		ln.Close()
	}
	for _, s := range dnsSrv {
		s.Shutdown()
	}
	evMu.Lock()
	evW.Flush()
	f.Sync()
	evMu.Unlock()
	log.Printf("soaksrv: stopped")
}

func serveDNS(table []*Domain) []*dns.Server {
	byName := map[string]*Domain{}
	for _, d := range table {
		byName[dns.Fqdn(d.Name)] = d
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		m.RecursionAvailable = true
		if len(r.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		soa := &dns.SOA{Hdr: dns.RR_Header{Name: dns.Fqdn(*suffix), Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns: "ns." + dns.Fqdn(*suffix), Mbox: "h." + dns.Fqdn(*suffix), Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 30}
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 30}
		}
		// mx.D, mx1.D, mx2.D: the address records.
		var host string
		var d *Domain
		for _, p := range []string{"mx.", "mx1.", "mx2."} {
			if rest, ok := strings.CutPrefix(name, p); ok {
				if dd := byName[rest]; dd != nil {
					host, d = p, dd
				}
			}
		}
		if d == nil {
			d = byName[name]
		}
		switch {
		case d == nil || d.Kind == "nxdomain":
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa}
		case d.Kind == "servfail":
			m.Rcode = dns.RcodeServerFailure
		case host != "":
			ip := d.IP
			if host == "mx2." {
				ip = d.IP2
			}
			if q.Qtype == dns.TypeA && (host != "mx2." || d.IP2 != "") {
				m.Answer = []dns.RR{&dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(ip)}}
			} else {
				m.Ns = []dns.RR{soa}
			}
		case q.Qtype == dns.TypeMX:
			if d.Kind == "mxpair" {
				m.Answer = []dns.RR{
					&dns.MX{Hdr: hdr(dns.TypeMX), Preference: 10, Mx: "mx1." + dns.Fqdn(d.Name)},
					&dns.MX{Hdr: hdr(dns.TypeMX), Preference: 20, Mx: "mx2." + dns.Fqdn(d.Name)},
				}
			} else {
				m.Answer = []dns.RR{&dns.MX{Hdr: hdr(dns.TypeMX), Preference: 10, Mx: "mx." + dns.Fqdn(d.Name)}}
			}
		default:
			m.Ns = []dns.RR{soa}
		}
		w.WriteMsg(m)
	})
	var out []*dns.Server
	for _, netw := range []string{"udp", "tcp"} {
		s := &dns.Server{Addr: *dnsAddr, Net: netw, Handler: h}
		started := make(chan error, 1)
		s.NotifyStartedFunc = func() { started <- nil }
		go func() {
			if err := s.ListenAndServe(); err != nil {
				started <- err
			}
		}()
		if err := <-started; err != nil {
			log.Fatalf("dns %s: %v", netw, err)
		}
		out = append(out, s)
	}
	return out
}

func (s *server) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.session(c)
	}
}

// sess is one SMTP session's state.
type sess struct {
	s       *server
	c       net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	id      int64
	at      int64
	ntxn    int
	from    string
	envid   string
	ret     string
	rcpts   []string // accepted
	notify  []string
	nrcpt   int
	codes   []string
	rc      []string
	inTxn   bool
	stallAt int // stall-rcpt: the RCPT (from 0) it stalls at
}

func (ss *sess) reply(format string, args ...any) {
	fmt.Fprintf(ss.w, format+"\r\n", args...)
}

// flush sends the replies written; a slow server waits 1-3 s first, once
// per batch of commands (when the client has sent nothing more yet).
func (ss *sess) flush() error {
	if ss.r.Buffered() > 0 || ss.w.Buffered() == 0 {
		return nil
	}
	if ss.s.kind == "slow" {
		time.Sleep(ss.s.slowDelay())
	}
	ss.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return ss.w.Flush()
}

// stall holds the session without a reply until the client goes.
func (ss *sess) stall(where string) {
	// The replies to the commands before are sent, as a server that
	// stalls in this one would have: the client sees the stage.
	ss.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	ss.w.Flush()
	ss.c.SetReadDeadline(time.Now().Add(*stallMax))
	if ss.inTxn || where == "end of data" {
		ss.txnEvent("stalled", where)
	}
	io.Copy(io.Discard, ss.r)
}

func (ss *sess) txnEvent(out, note string) {
	emit(event{T: "txn", Domain: ss.s.d.Name, Kind: ss.s.kind, Server: ss.s.ip, Conn: ss.id, ConnAt: ss.at, Txn: ss.ntxn,
		From: ss.from, EnvID: ss.envid, NRcpt: ss.nrcpt, NAcc: len(ss.rcpts), Out: out, Codes: strings.Join(ss.codes, ","), RC: ss.rc, Note: note, DSN: ss.s.dsn})
}

func (ss *sess) reset() {
	ss.from, ss.envid, ss.ret = "", "", ""
	ss.rcpts, ss.notify, ss.codes, ss.rc = nil, nil, nil, nil
	ss.nrcpt = 0
	ss.inTxn = false
}

func (s *server) session(c net.Conn) {
	defer c.Close()
	ss := &sess{s: s, c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriter(c), id: connNo.Add(1), at: time.Now().UnixMicro()}
	if s.kind == "greet421" && s.chance(0.4) {
		ss.reply("421 4.3.2 mx.%s busy, try later", s.d.Name)
		ss.w.Flush()
		return
	}
	ss.reply("220 mx.%s ESMTP soak", s.d.Name)
	if ss.flush() != nil {
		return
	}
	for {
		c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := ss.r.ReadString('\n')
		if err != nil {
			if ss.inTxn {
				ss.txnEvent("aborted", "connection closed: "+err.Error())
			}
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			if s.kind == "stall-ehlo" {
				ss.stall("ehlo")
				return
			}
			ss.reset()
			ss.reply("250-mx.%s", s.d.Name)
			ss.reply("250-PIPELINING")
			if s.kind != "accept-7bit" {
				ss.reply("250-8BITMIME")
			}
			ss.reply("250-ENHANCEDSTATUSCODES")
			ss.reply("250-SIZE 52428800")
			if s.kind == "rcptmax10" {
				ss.reply("250-LIMITS RCPTMAX=10")
			}
			if s.kind == "mailmax2" {
				ss.reply("250-LIMITS MAILMAX=2")
			}
			if s.dsn {
				ss.reply("250-DSN")
			}
			ss.reply("250 SMTPUTF8")
		case "HELO":
			ss.reply("250 mx.%s", s.d.Name)
		case "MAIL":
			if ss.inTxn {
				ss.reply("503 5.5.1 nested MAIL")
				break
			}
			if s.kind == "stall-2nd" && ss.ntxn > 0 {
				ss.stall("mail")
				return
			}
			if s.kind == "mailmax2" && ss.ntxn >= 2 {
				// As Oracle Messaging Server answers past its
				// ALLOW_TRANSACTIONS_PER_SESSION.
				from, _ := splitPath(arg, "FROM:")
				emit(event{T: "mailmax", Domain: s.d.Name, Kind: s.kind, Server: s.ip, Conn: ss.id, ConnAt: ss.at, Txn: ss.ntxn + 1, From: from})
				ss.reply("451 4.5.3 No more transactions allowed")
				break
			}
			if s.kind == "cut-421" && ss.ntxn > 0 && s.chance(0.35) {
				ss.reply("421 4.7.0 mx.%s closing: enough for this connection", s.d.Name)
				ss.w.Flush()
				return
			}
			ss.reset()
			ss.inTxn = true
			ss.ntxn++
			if s.chance(0.5) {
				ss.stallAt = 0
			} else if s.chance(0.5) {
				ss.stallAt = 1
			} else {
				ss.stallAt = 2
			}
			path, params := splitPath(arg, "FROM:")
			ss.from = path
			for _, p := range params {
				k, v, _ := strings.Cut(p, "=")
				switch strings.ToUpper(k) {
				case "ENVID":
					ss.envid = v
				case "RET":
					ss.ret = v
				}
			}
			ss.reply("250 2.1.0 ok")
		case "RCPT":
			if !ss.inTxn {
				ss.reply("503 5.5.1 need MAIL")
				break
			}
			if s.kind == "stall-rcpt" && ss.nrcpt == ss.stallAt {
				// At the first RCPT, the second or the third: some
				// recipients may have their reply, the rest none.
				ss.stall("rcpt")
				return
			}
			path, params := splitPath(arg, "TO:")
			notify := ""
			for _, p := range params {
				k, v, _ := strings.Cut(p, "=")
				if strings.EqualFold(k, "NOTIFY") {
					notify = v
				}
			}
			ss.nrcpt++
			code := s.rcptReply(ss, path)
			ss.codes = append(ss.codes, code[:3])
			if f := strings.Fields(code); len(f) > 1 && strings.Count(f[1], ".") == 2 {
				ss.rc = append(ss.rc, path+"|"+f[0]+" "+f[1])
			} else {
				ss.rc = append(ss.rc, path+"|"+code[:3])
			}
			if code[0] == '2' {
				ss.rcpts = append(ss.rcpts, path)
				ss.notify = append(ss.notify, notify)
			}
			ss.reply("%s", code)
		case "DATA":
			if !ss.inTxn {
				ss.reply("503 5.5.1 need MAIL")
				break
			}
			if s.kind == "stall-data" || s.kind == "stall-rcpt" {
				ss.stall("data")
				return
			}
			if len(ss.rcpts) == 0 {
				ss.reply("554 5.5.1 no valid recipients")
				ss.txnEvent("refused", "no valid recipients")
				ss.reset()
				break
			}
			ss.reply("354 go ahead")
			if ss.flush() != nil {
				return
			}
			if !ss.data() {
				return
			}
		case "RSET":
			if ss.inTxn {
				ss.txnEvent("reset", "")
			}
			ss.reset()
			ss.reply("250 2.0.0 ok")
		case "NOOP":
			ss.reply("250 2.0.0 ok")
		case "QUIT":
			if ss.inTxn {
				ss.txnEvent("aborted", "quit")
			}
			ss.reply("221 2.0.0 bye")
			ss.w.Flush()
			return
		default:
			ss.reply("502 5.5.2 unknown command")
		}
		if ss.flush() != nil {
			if ss.inTxn {
				ss.txnEvent("aborted", "write failed")
			}
			return
		}
	}
}

// rcptReply decides a recipient's reply by the server's kind and the
// recipient's local part's first letter.
func (s *server) rcptReply(ss *sess, addr string) string {
	local, dom, _ := strings.Cut(addr, "@")
	if !strings.EqualFold(dom, s.d.Name) {
		emit(event{T: "anomaly", Domain: s.d.Name, Server: s.ip, Rcpt: addr, Note: "recipient of another domain"})
		return "550 5.7.1 relay not permitted"
	}
	p := byte(0)
	if local != "" {
		p = local[0]
	}
	acc := len(ss.rcpts)
	switch s.kind {
	case "grey":
		switch p {
		case 'g':
			if _, seen := s.grey.LoadOrStore(ss.from+" "+addr, true); !seen {
				return "451 4.7.1 greylisted, try again"
			}
		case 't':
			return "451 4.3.0 temporary failure for this recipient"
		}
	case "reject":
		switch p {
		case 'b':
			return "550 5.1.1 no such user"
		case 'q':
			return "552 5.2.2 mailbox full"
		}
	case "limit30":
		if acc >= 30 {
			return "452 4.5.3 too many recipients"
		}
	case "limit20-552":
		if acc >= 20 {
			return "552 too many recipients"
		}
	case "rcptmax10":
		if acc >= 10 {
			return "452 4.5.3 too many recipients (RCPTMAX=10)"
		}
	case "mbfull":
		switch p {
		case 'f':
			if s.chance(0.5) {
				return "452 4.2.2 mailbox full"
			}
		case 'h':
			return "452 4.2.2 mailbox full"
		}
	}
	return "250 2.1.5 ok"
}

// data reads the message; it reports whether the session goes on.
func (ss *sess) data() bool {
	s := ss.s
	drop := s.kind == "drop-data" && s.chance(0.3)
	var buf bytes.Buffer
	for {
		ss.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := ss.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			buf.Write(line)
			continue
		}
		if err != nil {
			ss.txnEvent("aborted", "in the body: "+err.Error())
			return false
		}
		if bytes.Equal(line, []byte(".\r\n")) {
			break
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		buf.Write(line)
		if drop && buf.Len() > 300 {
			ss.txnEvent("dropped", "in the body")
			return false
		}
	}
	if s.kind == "stall-body" {
		ss.stall("end of data")
		return false
	}
	msg := buf.Bytes()
	msgID, ok := checkBody(msg)
	if !ok {
		os.WriteFile(filepath.Join(filepath.Dir(*events), fmt.Sprintf("badbody-%d-%d.eml", ss.id, ss.ntxn)), msg, 0o644)
	}
	if s.d.Kind == "sender" {
		rep := parseReport(msg, strings.Join(ss.rcpts, ","))
		emit(event{T: "dsn", Domain: s.d.Name, Server: s.ip, Conn: ss.id, From: ss.from, MsgID: rep.MsgID, Report: rep, Size: len(msg)})
	}
	dot := time.Now().UnixMicro() // the whole message is here
	if s.kind == "slow" {
		// The delay before the reply, here rather than in flush, so that
		// the deliveries are timed as the 250 is written.
		time.Sleep(s.slowDelay())
	}
	now := time.Now().UnixMicro()
	ok2 := ok
	// The copy counts as delivered when the 250 is decided, before it is
	// written: a relay killed before it reads it sends it again.
	for i, r := range ss.rcpts {
		emit(event{T: "dlv", Time: now, Domain: s.d.Name, Kind: s.kind, Server: s.ip, Conn: ss.id, Txn: ss.ntxn, From: ss.from, EnvID: ss.envid,
			Ret: ss.ret, MsgID: msgID, Rcpt: r, Notify: ss.notify[i], NRcpt: ss.nrcpt, BodyOK: &ok2, DSN: s.dsn, Size: len(msg), Dot: dot})
	}
	ss.txnEvent("delivered", msgID)
	ss.reply("250 2.0.0 ok: queued as %d.%d", ss.id, ss.ntxn)
	ss.reset()
	ss.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if ss.w.Flush() != nil {
		return false
	}
	if s.kind == "cut-close" && s.chance(0.35) {
		return false
	}
	return true
}

// checkBody returns the message's Message-ID and whether its body matches
// its X-Soak-Sum (the SHA-256 of the body after the header; absent in
// reports).
func checkBody(msg []byte) (string, bool) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return "", false
	}
	id := strings.Trim(m.Header.Get("Message-Id"), "<> ")
	sum := m.Header.Get("X-Soak-Sum")
	if sum == "" {
		return id, true
	}
	var body io.Reader = m.Body
	if strings.EqualFold(strings.TrimSpace(m.Header.Get("Content-Transfer-Encoding")), "quoted-printable") {
		body = quotedprintable.NewReader(m.Body) // converted to 7bit by the relay
	}
	b, _ := io.ReadAll(body)
	h := sha256.Sum256(b)
	return id, hex.EncodeToString(h[:]) == sum
}

// parseReport reads a multipart/report the relay sent.
func parseReport(msg []byte, to string) *report {
	rep := &report{To: to, Returned: "none"}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		rep.Err = "header: " + err.Error()
		return rep
	}
	rep.MsgID = strings.Trim(m.Header.Get("Message-Id"), "<> ")
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		rep.Err = fmt.Sprintf("content type %q: %v", m.Header.Get("Content-Type"), err)
		return rep
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			rep.Err = "part: " + err.Error()
			return rep
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		b, _ := io.ReadAll(p)
		switch pt {
		case "message/delivery-status", "message/global-delivery-status":
			parseStatus(rep, b)
		case "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers":
			rep.Returned = pt
			if om, err := mail.ReadMessage(bytes.NewReader(append(b, '\r', '\n'))); err == nil {
				rep.OrigMsgID = strings.Trim(om.Header.Get("Message-Id"), "<> ")
				body, _ := io.ReadAll(om.Body)
				rep.HasBody = bytes.Contains(body, []byte("soak-body-marker"))
			}
		}
	}
	return rep
}

// parseStatus reads the per-message and per-recipient fields.
func parseStatus(rep *report, b []byte) {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	blocks := strings.Split(strings.TrimSpace(string(b)), "\n\n")
	for i, blk := range blocks {
		fields := map[string]string{}
		var last string
		for _, l := range strings.Split(blk, "\n") {
			if l != "" && (l[0] == ' ' || l[0] == '\t') && last != "" {
				fields[last] += " " + strings.TrimSpace(l)
				continue
			}
			k, v, _ := strings.Cut(l, ":")
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
		if i == 0 {
			rep.EnvID = fields["original-envelope-id"]
			continue
		}
		addr := func(v string) string {
			_, a, _ := strings.Cut(v, ";")
			return strings.TrimSpace(a)
		}
		rep.Recipients = append(rep.Recipients, reportRcpt{Final: addr(fields["final-recipient"]), Orig: addr(fields["original-recipient"]),
			Action: fields["action"], Status: fields["status"], Diag: fields["diagnostic-code"]})
	}
}

func splitPath(arg, prefix string) (string, []string) {
	arg = strings.TrimSpace(arg)
	if len(arg) >= len(prefix) && strings.EqualFold(arg[:len(prefix)], prefix) {
		arg = arg[len(prefix):]
	}
	arg = strings.TrimSpace(arg)
	end := strings.IndexByte(arg, '>')
	if !strings.HasPrefix(arg, "<") || end < 0 {
		return arg, nil
	}
	return arg[1:end], strings.Fields(arg[end+1:])
}
