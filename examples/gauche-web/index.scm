;; A small web app in Gauche Scheme: answers every request on $PORT with a greeting
;; that says which dyno served it and which Gauche runs it.
(use gauche.net)

(define (respond out status body)
  (format out "HTTP/1.1 ~a\r\nContent-Type: text/plain; charset=utf-8\r\n" status)
  (format out "Content-Length: ~a\r\nConnection: close\r\n\r\n~a"
          (string-size body) body)
  (flush out))

(define (serve client)
  (let* ([in (socket-input-port client)]
         [out (socket-output-port client)]
         [request (read-line in)])
    ;; skip the headers, up to the empty line
    (let skip ([line (read-line in)])
      (unless (or (eof-object? line) (equal? line ""))
        (skip (read-line in))))
    (respond out "200 OK"
             (format #f "Hello from Gauche ~a on ~a: ~a\n"
                     (gauche-version) (or (sys-getenv "DYNO") "?")
                     (if (eof-object? request) "" request)))
    (socket-close client)))

(define (main args)
  (let* ([port (string->number (or (sys-getenv "PORT") "5000"))]
         [server (make-server-socket 'inet port :reuse-addr? #t)])
    (format #t "gauche-web: listening on ~a\n" port)
    (flush)
    (let loop ()
      (guard (e [else (format (current-error-port) "request failed: ~a\n"
                              (condition-message e))])
        (serve (socket-accept server)))
      (loop))))
