;;; mellum.el --- Mellum completions through eglot  -*- lexical-binding: t; -*-

;; Eglot runs one server per major mode and project, so this makes mellum-lsp the server for
;; the modes below.  Eglot asks for completions with textDocument/completion (no inline ghost
;; text), and the server answers with one "Mellum AI" item sorted first: use
;; `completion-at-point' (C-M-i) or a completion UI such as corfu or company.
;;
;;   (require 'mellum)           ; with this file on `load-path'
;;   M-x eglot                   ; in a Python/JS/TS/Go/Rust/Java/C buffer

;;; Code:

(require 'eglot)

(defgroup mellum nil "Mellum code completions." :group 'tools)

(defcustom mellum-server-command '("mellum-lsp" "serve")
  "How to start the Mellum language server."
  :type '(repeat string))

(defcustom mellum-settings '(:completion (:maxTokens 64 :multiline t) :context (:budgetTokens 8192))
  "The \"mellum\" settings section, as a plist with camelCase keys."
  :type 'plist)

(defconst mellum-modes
  '(python-mode python-ts-mode js-mode js-ts-mode typescript-ts-mode tsx-ts-mode go-mode go-ts-mode
    rust-mode rust-ts-mode java-mode java-ts-mode c-mode c-ts-mode c++-mode c++-ts-mode))

(add-to-list 'eglot-server-programs
             `(,mellum-modes . (,@mellum-server-command :initializationOptions (:mellum ,mellum-settings))))

;; Answer workspace/configuration for the "mellum" section.
(setq-default eglot-workspace-configuration
              (plist-put (copy-sequence (default-value 'eglot-workspace-configuration)) :mellum mellum-settings))

(provide 'mellum)
;;; mellum.el ends here
