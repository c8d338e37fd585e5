;;; emacs_driver.el --- drive eglot + mellum.el through one suggestion  -*- lexical-binding: t; -*-

;; emacs --batch -l editors/emacs/mellum.el -l tests/editors/emacs_driver.el
;;
;; Environment: MELLUM_FILE (a Python file to edit), MELLUM_TYPE (text typed on its last, empty
;; line), MELLUM_SETTINGS (JSON), MELLUM_RESULT (JSON written here), MELLUM_TIMEOUT_S (for the
;; engine and the first suggestion).  Keys are typed with `execute-kbd-macro', so the command
;; loop runs `post-command-hook' as for a user; waits poll a condition with a deadline while
;; `accept-process-output' lets the server's answers and timers in.

(require 'json)
(require 'cl-lib)

(defvar mellum-driver-result nil "Alist written to MELLUM_RESULT.")
(defvar mellum-driver-start (float-time))

(defun mellum-driver-put (key value)
  (setf (alist-get key mellum-driver-result) value))

(defun mellum-driver-mark (name)
  (mellum-driver-put name (round (* 1000 (- (float-time) mellum-driver-start)))))

(defun mellum-driver-env (name &optional default)
  (let ((v (getenv name)))
    (if (or (null v) (string-empty-p v))
        (or default (error "Missing environment variable %s" name))
      v)))

(defun mellum-driver-wait (what timeout pred)
  "Process events until PRED returns non-nil (its value is returned), or fail after TIMEOUT s."
  (let ((deadline (+ (float-time) timeout)) value)
    (while (not (setq value (funcall pred)))
      (when (> (float-time) deadline)
        (error "Timed out after %ss waiting for %s" timeout what))
      (accept-process-output nil 0.02))
    value))

(defun mellum-driver-lines ()
  (split-string (buffer-substring-no-properties (point-min) (point-max)) "\n"))

(defun mellum-driver-json (string)
  (json-parse-string string :object-type 'plist :array-type 'list :null-object nil :false-object nil))

(defun mellum-driver-status (server)
  (jsonrpc-request server :mellum/status nil))

(defun mellum-driver-run ()
  (setq mellum-settings (mellum-driver-json (mellum-driver-env "MELLUM_SETTINGS" "{}")))
  (let* ((timeout (string-to-number (mellum-driver-env "MELLUM_TIMEOUT_S" "40")))
         (typed (mellum-driver-env "MELLUM_TYPE"))
         accepted-text server)
    (mellum-driver-put 'emacs emacs-version)
    (mellum-driver-put 'eglot (let ((lib (locate-library "eglot"))) (and lib (file-name-directory lib))))
    (find-file (mellum-driver-env "MELLUM_FILE"))
    (mellum-driver-put 'major_mode (symbol-name major-mode))
    (apply #'eglot (eglot--guess-contact))
    (setq server (mellum-driver-wait "eglot to connect to mellum-lsp" 20
                                     (lambda () (and mellum-inline-mode (mellum--server)))))
    (mellum-driver-mark 'connected_ms)
    (mellum-driver-wait "the engine to be connected" timeout
                        (lambda ()
                          (let ((engine (plist-get (mellum-driver-status server) :engine)))
                            (and engine (plist-get engine :connected)))))
    (mellum-driver-mark 'engine_ready_ms)
    (advice-add 'mellum-inline-accept :before
                (lambda (&rest _) (setq accepted-text (mellum-inline-suggestion))))
    (goto-char (point-max))
    (execute-kbd-macro typed)
    (let* ((before (mellum-driver-lines))
           (shown (mellum-driver-wait "the suggestion overlay" timeout
                                      (lambda ()
                                        (and (overlayp mellum--overlay)
                                             (overlay-get mellum--overlay 'after-string)))))
           (text (substring-no-properties shown)))
      (mellum-driver-mark 'suggestion_shown_ms)
      (unless (equal text (mellum-inline-suggestion))
        (error "The overlay shows %S but the mode holds %S" text (mellum-inline-suggestion)))
      (mellum-driver-put 'before before)
      (mellum-driver-put 'suggestion text)
      (mellum-driver-put 'overlay_at_point (= (overlay-start mellum--overlay) (point)))
      ;; one word with M-<right>, then the rest with TAB, as a user would
      (let ((start (point)))
        (execute-kbd-macro (kbd "M-<right>"))
        (mellum-driver-put 'word (buffer-substring-no-properties start (point)))
        (mellum-driver-put 'rest_shown (mellum-inline-suggestion))
        (when (mellum-inline-suggestion)
          (execute-kbd-macro (kbd "TAB"))
          (mellum-driver-wait "TAB to accept" 5 (lambda () accepted-text)))
        (mellum-driver-mark 'accepted_ms)
        (mellum-driver-put 'accepted_rest accepted-text)
        (mellum-driver-put 'inserted (buffer-substring-no-properties start (point)))
        (mellum-driver-put 'overlay_after_accept (and mellum--overlay t))
        (mellum-driver-put 'after (mellum-driver-lines))))
    ;; the server saw the same text, and counted the acceptance
    (let ((uri (plist-get (eglot--TextDocumentIdentifier) :uri))
          (want (buffer-substring-no-properties (point-min) (point-max))))
      (mellum-driver-wait "the server's copy to match" 10
                          (lambda ()
                            (mellum--flush-changes)
                            (equal want (plist-get (jsonrpc-request server :mellum/document (list :uri uri))
                                                   :text))))
      (mellum-driver-put 'server_document_matches t)
      (mellum-driver-put 'session
                         (plist-get (mellum-driver-wait
                                     "the server to count the acceptance" 10
                                     (lambda ()
                                       (let* ((status (mellum-driver-status server))
                                              (session (plist-get status :session)))
                                         (and (plist-get session :accepted)
                                              (plist-get session :partially_accepted) status))))
                                    :session)))
    (mellum-driver-put 'ok t)))

(condition-case err
    (mellum-driver-run)
  (error
   (mellum-driver-put 'ok nil)
   (mellum-driver-put 'error (error-message-string err))
   (mellum-driver-put 'buffer_at_error (buffer-substring-no-properties (point-min) (point-max)))))
(mellum-driver-put 'total_ms (round (* 1000 (- (float-time) mellum-driver-start))))
(let ((server (ignore-errors (mellum--server))))
  (when server
    (ignore-errors (eglot-shutdown server))))
(with-temp-file (mellum-driver-env "MELLUM_RESULT")
  (insert (json-encode mellum-driver-result)))
(kill-emacs 0)

;;; emacs_driver.el ends here
