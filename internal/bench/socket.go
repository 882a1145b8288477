package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// The Engine.IO v4 and Socket.IO v5 frames this client speaks: the
// websocket transport from the first request (the official clients'
// transports: ["websocket"]), one packet per websocket message.
//
//	server: 0{"sid":…,"pingInterval":…,"pingTimeout":…}   Engine.IO open
//	client: 40{"token":"<JWT>"}                            Socket.IO CONNECT with auth
//	server: 40{"sid":…}  or  44{"message":…}               CONNECT or CONNECT_ERROR
//	server: 2            client: 3                         ping, pong
//	server: 42["asset_processed",{…}]                      EVENT (42<ack id>[…] also parsed)
//	server: 41 or 1                                        DISCONNECT, Engine.IO close

// readLimit bounds one websocket message; events are a few hundred bytes.
const readLimit = 1 << 20

// openPacket is the part of the Engine.IO open packet the client uses.
type openPacket struct {
	SID          string `json:"sid"`
	PingInterval int64  `json:"pingInterval"` // milliseconds
	PingTimeout  int64  `json:"pingTimeout"`  // milliseconds
}

// Event is the part of an asset_processed event the bench checks.
type Event struct {
	EventID     string `json:"eventId"`
	AssetID     string `json:"assetId"`
	UserID      string `json:"userId"`
	Status      string `json:"status"`
	ProcessedAt string `json:"processedAt"`
}

// parseOpen decodes an Engine.IO open packet ("0{…}").
func parseOpen(msg string) (openPacket, error) {
	var o openPacket
	data, ok := strings.CutPrefix(msg, "0")
	if !ok {
		return o, fmt.Errorf("first packet is not an Engine.IO open: %.40q", msg)
	}
	if err := json.Unmarshal([]byte(data), &o); err != nil {
		return o, fmt.Errorf("Engine.IO open packet: %w", err)
	}
	if o.SID == "" || o.PingInterval <= 0 || o.PingTimeout <= 0 {
		return o, fmt.Errorf("Engine.IO open packet without sid, pingInterval or pingTimeout: %.200s", data)
	}
	return o, nil
}

// connectPacket is the Socket.IO CONNECT to namespace "/" with auth {token}.
func connectPacket(token string) string {
	b, _ := json.Marshal(struct {
		Token string `json:"token"`
	}{token}) // a string field cannot fail
	return "40" + string(b)
}

// parseConnectReply decodes the answer to CONNECT: nil for "40{…}", the
// server's message for "44{…}".
func parseConnectReply(msg string) error {
	switch {
	case strings.HasPrefix(msg, "40"):
		return nil
	case strings.HasPrefix(msg, "44"):
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(msg[2:]), &e) != nil || e.Message == "" {
			return fmt.Errorf("connect_error %.200s", msg[2:])
		}
		return fmt.Errorf("connect_error: %s", e.Message)
	}
	return fmt.Errorf("unexpected packet before CONNECT's reply: %.40q", msg)
}

// parseEvent decodes a Socket.IO EVENT for the default namespace
// ("42[name,data…]" or "42<ack id>[name,data…]") into its name and first
// argument. ok is false for any other packet.
func parseEvent(msg string) (name string, arg json.RawMessage, ok bool, err error) {
	rest, ok := strings.CutPrefix(msg, "42")
	if !ok {
		return "", nil, false, nil
	}
	rest = strings.TrimLeft(rest, "0123456789")
	var parts []json.RawMessage
	if err := json.Unmarshal([]byte(rest), &parts); err != nil || len(parts) == 0 {
		return "", nil, true, fmt.Errorf("socket.io event is not a JSON array: %.80q", rest)
	}
	if err := json.Unmarshal(parts[0], &name); err != nil {
		return "", nil, true, fmt.Errorf("socket.io event name: %w", err)
	}
	if len(parts) > 1 {
		arg = parts[1]
	}
	return name, arg, true, nil
}

// socketURL is the Engine.IO websocket endpoint of the klectr at base.
func socketURL(base *url.URL) string {
	u := *base
	u.Scheme = map[string]string{"https": "wss"}[base.Scheme]
	if u.Scheme == "" {
		u.Scheme = "ws"
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/socket.io/"
	u.RawQuery = "EIO=4&transport=websocket"
	return u.String()
}

// socket is one connected Socket.IO client.
type socket struct {
	c     *websocket.Conn
	alive time.Duration // the longest silence before the server counts as gone
}

// dialSocket opens a websocket to wsURL and CONNECTs with token, within ctx.
func dialSocket(ctx context.Context, wsURL, token string) (*socket, error) {
	c, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(readLimit)
	s := &socket{c: c}
	msg, err := s.read(ctx)
	if err == nil {
		var o openPacket
		if o, err = parseOpen(msg); err == nil {
			s.alive = time.Duration(o.PingInterval+o.PingTimeout) * time.Millisecond
			err = c.Write(ctx, websocket.MessageText, []byte(connectPacket(token)))
		}
	}
	// The reply to CONNECT; a ping may come first.
	for err == nil {
		if msg, err = s.read(ctx); err != nil {
			break
		}
		if msg == "2" {
			err = c.Write(ctx, websocket.MessageText, []byte("3"))
			continue
		}
		if err = parseConnectReply(msg); err == nil {
			return s, nil
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	return nil, err
}

func (s *socket) read(ctx context.Context) (string, error) {
	typ, b, err := s.c.Read(ctx)
	if err != nil {
		return "", err
	}
	if typ != websocket.MessageText {
		return "", errors.New("binary websocket message; the contract has none")
	}
	return string(b), nil
}

// serve reads until ctx ends or the connection does, answering pings and
// passing every asset_processed event to onEvent. It returns nil when ctx
// ended it, otherwise why the connection ended.
func (s *socket) serve(ctx context.Context, onEvent func(Event, time.Time)) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, s.alive)
		msg, err := s.read(rctx)
		cancel()
		at := time.Now()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case msg == "2":
			wctx, cancel := context.WithTimeout(ctx, s.alive)
			err = s.c.Write(wctx, websocket.MessageText, []byte("3"))
			cancel()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("pong: %w", err)
			}
		case msg == "1" || strings.HasPrefix(msg, "41"):
			return fmt.Errorf("the server disconnected the socket (%q)", msg)
		case msg == "6":
		default:
			name, arg, ok, err := parseEvent(msg)
			if err != nil {
				return err
			}
			if !ok || name != "asset_processed" {
				continue
			}
			var ev Event
			if err := json.Unmarshal(arg, &ev); err != nil {
				return fmt.Errorf("asset_processed: %w", err)
			}
			onEvent(ev, at)
		}
	}
}

func (s *socket) close() { s.c.Close(websocket.StatusNormalClosure, "") }
