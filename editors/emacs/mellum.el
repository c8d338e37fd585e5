;;; mellum.el --- Mellum code suggestions through eglot  -*- lexical-binding: t; -*-

;; Version: 0.2.0
;; Package-Requires: ((emacs "28.1") (eglot "1.9"))

;;; Commentary:

;; Makes `mellum-lsp serve' the eglot server for the modes in `mellum-modes' and shows its
;; suggestions as ghost text.
;;
;; Needs eglot: built into Emacs 29 and later; on Emacs 28 install it first, e.g. on Debian 12
;; `apt install elpa-eglot' (eglot 1.9), or `M-x package-install RET eglot'.  `mellum-lsp' must
;; be on `exec-path' (e.g. `pipx install mellum-lsp'), or set `mellum-server-command' to its
;; full path.
;;
;;   (add-to-list 'load-path "/path/to/mellum-lsp/editors/emacs")
;;   (require 'mellum)
;;   (add-hook 'python-mode-hook #'eglot-ensure)    ; or M-x eglot in a Python buffer
;;
;; Eglot has no inline completion, so `mellum-inline-mode' (turned on in every buffer the Mellum
;; server manages, unless `mellum-inline-completion' is nil) asks for
;; `textDocument/inlineCompletion' itself once Emacs has been idle for `mellum-inline-delay'
;; seconds after a command, and shows the first item as an overlay after point.  TAB accepts it,
;; M-<right> accepts one word, C-g or any other command dismisses it.  The client announces the
;; inlineCompletion capability, so the server sends no completion item as well; with
;; `mellum-inline-completion' nil it announces nothing and the server offers its suggestion as
;; one "Mellum AI" item of `completion-at-point' instead.  Code actions: `eglot-code-actions'.
;;
;; Eglot runs one server per major mode and project: the modes in `mellum-modes' use Mellum
;; instead of another language server.  The Mellum settings go in `mellum-settings' (sent as
;; initializationOptions); per project, put a `:mellum' section in
;; `eglot-workspace-configuration' (answers workspace/configuration).

;;; Code:

(require 'cl-lib)
(require 'jsonrpc)
(require 'subr-x)

(unless (require 'eglot nil t)
  ;; `emacs -Q' skips the package activation that makes an installed eglot loadable.
  (when (and (fboundp 'package-activate-all) (not (bound-and-true-p package--activated)))
    (package-activate-all))
  (unless (require 'eglot nil t)
    (user-error "mellum: cannot load eglot: it is built in from Emacs 29; on Emacs %s install it \
with `apt install elpa-eglot' (Debian/Ubuntu) or `M-x package-install RET eglot'" emacs-version)))

(defvar eglot-server-programs)
(declare-function eglot--TextDocumentPositionParams "eglot")
(declare-function eglot--lsp-position-to-point "eglot")

(defgroup mellum nil "Mellum code suggestions." :group 'tools :prefix "mellum-")

(defcustom mellum-server-command '("mellum-lsp" "serve")
  "How to start the Mellum language server (program and arguments)."
  :type '(repeat string))

(defcustom mellum-settings '(:completion (:maxTokens 64))
  "The \"mellum\" settings section, as a plist with camelCase keys."
  :type 'plist)

(defcustom mellum-inline-completion t
  "Non-nil: show suggestions as ghost text (`mellum-inline-mode').
Nil: the server offers them as a completion item instead.
Applies to servers started later."
  :type 'boolean)

(defcustom mellum-inline-delay 0.15
  "Seconds after the last command before asking for a suggestion."
  :type 'number)

(defface mellum-inline-face '((t :inherit shadow))
  "Face of the suggestion shown after point.")

(defconst mellum-modes
  '(python-mode python-ts-mode js-mode js-ts-mode typescript-mode typescript-ts-mode tsx-ts-mode
    go-mode go-ts-mode rust-mode rust-ts-mode java-mode java-ts-mode c-mode c-ts-mode c++-mode
    c++-ts-mode)
  "Major modes whose buffers Mellum serves.")

;;;; The server class: announces inline completion.

(defclass mellum-server (eglot-lsp-server) ()
  :documentation "An eglot connection to `mellum-lsp serve'.")

(cl-defmethod eglot-client-capabilities ((_server mellum-server))
  "Eglot's capabilities, plus inlineCompletion if `mellum-inline-completion'."
  (let ((caps (copy-sequence (cl-call-next-method))))
    (when mellum-inline-completion
      (setq caps (plist-put caps :textDocument
                            (append (plist-get caps :textDocument)
                                    (list :inlineCompletion '(:dynamicRegistration :json-false))))))
    caps))

(defun mellum--contact (&optional _interactive)
  "The eglot contact for the Mellum server.
A `user-error' says what to do when the server command is missing."
  (let ((program (car mellum-server-command)))
    (unless (executable-find program)
      (user-error "mellum: %S is not on `exec-path'; install it (e.g. `pipx install mellum-lsp'), add \
its folder to `exec-path', or set `mellum-server-command' to its full path" program))
    `(mellum-server ,@mellum-server-command :initializationOptions (:mellum ,mellum-settings))))

(add-to-list 'eglot-server-programs (cons mellum-modes #'mellum--contact))

;;;; Helpers over eglot's internals (stable from eglot 1.9 to the one in Emacs 30).

(defun mellum--server ()
  "The Mellum server of this buffer, or nil."
  (let ((server (and (fboundp 'eglot-current-server) (eglot-current-server))))
    (and (cl-typep server 'mellum-server) server)))

(defun mellum--flush-changes ()
  "Send the buffer changes eglot still holds back (it sends them on an idle timer)."
  (when (fboundp 'eglot--signal-textDocument/didChange)
    (eglot--signal-textDocument/didChange)))

(defun mellum--position-params ()
  "TextDocumentPositionParams of point."
  (eglot--TextDocumentPositionParams))

(defun mellum--point (position)
  "The buffer position of the LSP POSITION (a plist)."
  (eglot--lsp-position-to-point position))

;;;; Ghost text.

(defvar-local mellum--overlay nil "The overlay showing the suggestion, or nil.")
(defvar-local mellum--suggestion nil
  "The shown suggestion, or nil.
A plist (:text TEXT :point POS :command COMMAND :server SERVER).")
(defvar-local mellum--timer nil "The timer that will ask for a suggestion.")
(defvar-local mellum--request 0 "Number of the latest suggestion request in this buffer.")

(defvar mellum-inline-active-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "TAB") #'mellum-inline-accept)
    (define-key map (kbd "<tab>") #'mellum-inline-accept)
    (define-key map (kbd "M-<right>") #'mellum-inline-accept-word)
    (define-key map (kbd "C-g") #'mellum-inline-dismiss)
    map)
  "Keys active while a suggestion is shown.")

(defvar-local mellum--showing nil "Non-nil while a suggestion is shown (enables the keys).")
(defvar mellum--emulation-alist `((mellum--showing . ,mellum-inline-active-map)))
(add-to-list 'emulation-mode-map-alists 'mellum--emulation-alist)

(defun mellum-inline-suggestion ()
  "The text of the suggestion shown in this buffer, or nil."
  (plist-get mellum--suggestion :text))

(defun mellum--show (text command server)
  "Show TEXT after point as the suggestion; COMMAND runs on acceptance."
  (mellum--hide)
  (let ((shown (propertize text 'face 'mellum-inline-face)))
    (put-text-property 0 1 'cursor t shown) ; keep the cursor before the suggestion
    (setq mellum--overlay (make-overlay (point) (point) nil nil t))
    (overlay-put mellum--overlay 'after-string shown)
    (overlay-put mellum--overlay 'mellum t)
    (setq mellum--suggestion (list :text text :point (point) :command command :server server)
          mellum--showing t)))

(defun mellum--hide ()
  "Remove the shown suggestion."
  (when mellum--overlay
    (delete-overlay mellum--overlay))
  (setq mellum--overlay nil mellum--suggestion nil mellum--showing nil))

(defun mellum--item-text (item)
  "The text ITEM (a plist from the server) adds at point.
Nil if it does not continue what is typed."
  (let* ((insert (plist-get item :insertText))
         (text (if (stringp insert) insert (plist-get insert :value)))
         (range (plist-get item :range)))
    (when (and range (stringp text))
      (let ((start (mellum--point (plist-get range :start))))
        (when (< start (point))            ; the item replaces text typed before point
          (let ((typed (buffer-substring-no-properties start (point))))
            (setq text (and (string-prefix-p typed text) (substring text (length typed))))))))
    (and (stringp text) (not (string-empty-p text)) text)))

(defun mellum--request ()
  "Ask the server for a suggestion at point and show it if nothing moved meanwhile."
  (let ((server (mellum--server))
        (buffer (current-buffer))
        (tick (buffer-chars-modified-tick))
        (pos (point))
        (id (cl-incf mellum--request)))
    (when server
      (mellum--flush-changes)
      (jsonrpc-async-request
       server :textDocument/inlineCompletion
       (append (mellum--position-params) (list :context (list :triggerKind 2)))
       :success-fn
       (lambda (result)
         (when (buffer-live-p buffer)
           (with-current-buffer buffer
             (when (and (= id mellum--request) (= tick (buffer-chars-modified-tick)) (= pos (point)))
               (let* ((items (if (vectorp result) result (plist-get result :items)))
                      (item (and (> (length items) 0) (aref items 0)))
                      (text (and item (mellum--item-text item))))
                 (if text
                     (mellum--show text (plist-get item :command) server)
                   (mellum--hide)))))))
       :error-fn (lambda (&rest _) nil)
       :timeout-fn (lambda (&rest _) nil)))))

(defun mellum--schedule ()
  "Ask for a suggestion after `mellum-inline-delay' seconds without a command.
A timer restarted by every command rather than an idle timer:
it also fires in `--batch'."
  (when (timerp mellum--timer)
    (cancel-timer mellum--timer))
  (let ((buffer (current-buffer)))
    (setq mellum--timer
          (run-with-timer mellum-inline-delay nil
                          (lambda ()
                            (when (and (buffer-live-p buffer) (eq buffer (window-buffer (selected-window))))
                              (with-current-buffer buffer
                                (setq mellum--timer nil)
                                (mellum--request))))))))

(defun mellum--post-command ()
  "After a command: drop the suggestion unless the command used it; ask again.
A nil `this-command' is no command (the command loop runs the hook once
when it starts, as in `execute-kbd-macro' or a recursive edit)."
  (when this-command
    (unless (eq this-command 'mellum-inline-accept-word)
      (mellum--hide))
    (when (and (not (minibufferp)) (mellum--server))
      (mellum--schedule))))

(defun mellum--run-command (suggestion name &optional extra)
  "Run the server command NAME (`mellum.*') for SUGGESTION.
EXTRA is a plist added to the command's argument."
  (let* ((command (plist-get suggestion :command))
         (server (plist-get suggestion :server))
         (args (and command (plist-get command :arguments)))
         (first (and (> (length args) 0) (copy-sequence (aref args 0)))))
    (when (and command server (jsonrpc-running-p server))
      (while extra
        (setq first (plist-put first (pop extra) (pop extra))))
      (jsonrpc-async-request server :workspace/executeCommand
                             (list :command name :arguments (vector first))
                             :success-fn #'ignore :error-fn #'ignore :timeout-fn #'ignore))))

(defun mellum-inline-accept ()
  "Insert the shown suggestion."
  (interactive)
  (let ((suggestion mellum--suggestion))
    (when suggestion
      (mellum--hide)
      (goto-char (plist-get suggestion :point))
      (insert (plist-get suggestion :text))
      (mellum--run-command suggestion "mellum.accepted"))))

(defun mellum-inline-accept-word ()
  "Insert the next word of the shown suggestion and keep showing the rest."
  (interactive)
  (let* ((suggestion mellum--suggestion)
         (text (plist-get suggestion :text)))
    (when suggestion
      (let* ((word (if (string-match "\\`\\(?:\n[ \t]*\\|[ \t]*\\(?:\\sw\\|\\s_\\)+\\|[ \t]*[^ \t\n[:alnum:]_]+\\|[ \t]+\\)" text)
                       (match-string 0 text)
                     (substring text 0 1)))
             (rest (substring text (length word))))
        (mellum--hide)
        (goto-char (plist-get suggestion :point))
        (insert word)
        (mellum--run-command suggestion "mellum.partiallyAccepted" (list :acceptedLength (length word)))
        (unless (string-empty-p rest)
          (mellum--show rest (plist-get suggestion :command) (plist-get suggestion :server)))))))

(defun mellum-inline-dismiss ()
  "Hide the shown suggestion."
  (interactive)
  (let ((suggestion mellum--suggestion))
    (mellum--hide)
    (when suggestion
      (mellum--run-command suggestion "mellum.rejected"))))

(define-minor-mode mellum-inline-mode
  "Show Mellum's suggestions after point as you type; TAB accepts, C-g dismisses."
  :lighter " Mellum"
  (if mellum-inline-mode
      (add-hook 'post-command-hook #'mellum--post-command nil t)
    (remove-hook 'post-command-hook #'mellum--post-command t)
    (when (timerp mellum--timer)
      (cancel-timer mellum--timer))
    (mellum--hide)))

(defun mellum--maybe-inline ()
  "Turn on `mellum-inline-mode' in buffers the Mellum server manages."
  (when (and mellum-inline-completion (mellum--server))
    (mellum-inline-mode (if (bound-and-true-p eglot--managed-mode) 1 -1))))

(add-hook 'eglot-managed-mode-hook #'mellum--maybe-inline)

(provide 'mellum)
;;; mellum.el ends here
