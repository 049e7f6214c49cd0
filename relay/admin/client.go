package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// ErrNotRunning is returned by the client when nothing listens on the socket.
var ErrNotRunning = errors.New("mailhop is not running (no admin socket)")

// ErrNoPermission is returned by the client when the caller may not reach
// the socket (its mode, or that of data_dir): the relay may well be running.
var ErrNoPermission = errors.New("no permission to use the admin socket (root, the relay's user and members of admin.socket_group may)")

// Client talks to a running mailhop over its admin socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{socket: path, http: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// Do sends a request and decodes the JSON reply into out (when not nil).
func (c *Client) Do(method, path string, query url.Values, body io.Reader, out any) error {
	resp, err := c.open(method, path, query, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Message copies the content of queued message id to w.
func (c *Client) Message(id string, w io.Writer) error {
	resp, err := c.open("GET", "/v1/queue/"+url.PathEscape(id)+"/message", nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("message %s: got %d of %d bytes", id, n, resp.ContentLength)
	}
	return err
}

// open sends a request and returns the reply when it is 200 OK; any other
// status is a StatusError.
func (c *Client) open(method, path string, query url.Values, body io.Reader) (*http.Response, error) {
	u := "http://mailhop" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.roundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, statusError(resp.StatusCode, data)
	}
	return resp, nil
}

// roundTrip sends req over the socket; nothing listening is ErrNotRunning,
// a socket the caller may not reach ErrNoPermission.
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
				return nil, fmt.Errorf("%w: %s", ErrNoPermission, c.socket)
			}
			return nil, fmt.Errorf("%w: %s", ErrNotRunning, c.socket)
		}
		return nil, fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	return resp, nil
}

// statusError turns an error reply (JSON {"error": ...} or text) into a
// StatusError.
func statusError(code int, data []byte) error {
	var ae apiError
	if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
		return &StatusError{Code: code, Msg: ae.Error}
	}
	return &StatusError{Code: code, Msg: string(data)}
}

// StatusError is an error reply from the server.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// List returns the queued messages that match the filter.
func (c *Client) List(f Filter) ([]Message, error) {
	out := []Message{}
	err := c.Each(f, func(m Message) error {
		out = append(out, m)
		return nil
	})
	return out, err
}

// Each calls fn for every queued message that matches the filter, as the
// relay's list arrives, until fn returns an error (which Each returns).
func (c *Client) Each(f Filter, fn func(Message) error) error {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "domain": f.Domain, "sender": f.Sender, "rcpt": f.Rcpt} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.MinAge > 0 {
		q.Set("min_age", f.MinAge.String())
	}
	resp, err := c.open("GET", "/v1/queue", q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// The caller names the command: these errors say only what went wrong.
	dec := json.NewDecoder(resp.Body)
	if t, err := dec.Token(); err != nil {
		return fmt.Errorf("the relay's list: %w", err)
	} else if t != json.Delim('[') {
		return fmt.Errorf("the relay's list is no JSON array (starts with %v)", t)
	}
	for dec.More() {
		var m Message
		if err := dec.Decode(&m); err != nil {
			return fmt.Errorf("the relay's list was cut short: %w", err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("the relay's list was cut short: %w", err)
	}
	return nil
}

// Show returns one message.
func (c *Client) Show(id string) (*Message, error) {
	var m Message
	if err := c.Do("GET", "/v1/queue/"+url.PathEscape(id), nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Flush makes queued mail (of one domain, when not "") due now.
func (c *Client) Flush(domain string) (int, error) {
	q := url.Values{}
	if domain != "" {
		q.Set("domain", domain)
	}
	var r Result
	err := c.Do("POST", "/v1/queue/flush", q, nil, &r)
	return r.Count, err
}

// Action runs hold, release, delete or bounce on one message.
func (c *Client) Action(id, action string) error {
	return c.Do("POST", "/v1/queue/"+url.PathEscape(id)+"/"+action, nil, nil, nil)
}
